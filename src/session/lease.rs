//! A socket's registration in the presence registry, held for as long as the socket is.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use socketioxide::socket::Sid;

use crate::{
    cluster::presence::{Registry, log_failure, now_ms},
    rooms::Id,
};

/// A socket's registration in the presence registry. Dropping a lease that was not
/// released unregisters the socket: the fallback for a socket that never gets its
/// disconnect handler (one that goes away before its CONNECT ack is sent).
pub struct Lease {
    registry: Arc<Registry>,
    user: Id,
    sid: Sid,
    held: AtomicBool,
}

impl Lease {
    /// A lease for `user`'s socket `sid`, not yet registered.
    pub fn new(registry: Arc<Registry>, user: Id, sid: Sid) -> Lease {
        Lease {
            registry,
            user,
            sid,
            held: AtomicBool::new(false),
        }
    }

    /// Marks the socket registered (just before the registry is asked).
    pub fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    /// The socket.
    pub fn sid(&self) -> Sid {
        self.sid
    }

    /// Moves the registration to a new lease, for the socket's recovery window: this one
    /// no longer unregisters it when dropped. `None` when it was not registered.
    pub fn park(&self) -> Option<Lease> {
        self.held.swap(false, Ordering::AcqRel).then(|| Lease {
            registry: self.registry.clone(),
            user: self.user.clone(),
            sid: self.sid,
            held: AtomicBool::new(true),
        })
    }

    /// Lets go of the registration without unregistering: the socket recovered, and its
    /// new lease holds the registration now. `here`: whether it recovered on this instance
    /// (else this instance forgets it, and the one it recovered on keeps it).
    pub fn forget(&self, here: bool) {
        if self.held.swap(false, Ordering::AcqRel) && !here {
            self.registry.forget(&self.sid.to_string());
        }
    }

    /// Unregisters the socket (once, however often it is called).
    pub async fn release(&self) {
        if self.held.swap(false, Ordering::AcqRel)
            && let Err(e) = self
                .registry
                .disconnect(self.user.as_str(), &self.sid.to_string(), now_ms())
                .await
        {
            // The next resync removes it once Redis answers again.
            log_failure(self.user.as_str(), "unregister a socket", &e);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !*self.held.get_mut() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (registry, user, sid) = (self.registry.clone(), self.user.clone(), self.sid);
            rt.spawn(async move {
                if let Err(e) = registry
                    .disconnect(user.as_str(), &sid.to_string(), now_ms())
                    .await
                {
                    log_failure(user.as_str(), "unregister a socket", &e);
                }
            });
        }
    }
}
