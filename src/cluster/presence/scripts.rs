//! The Lua scripts of the Redis presence registry (each in `lua/`, one round trip and
//! atomic), with what each takes and returns.

use fred::types::scripts::Script;

// Registers sockets of one user (a new one, or those Redis lost), with the status this
// instance knows for the user. KEYS: user:<u>, socks:<u>, inst:<id>:socks, pending. ARGV:
// user, known status, known since, targets, overwrite ('1': a known status newer than the
// stored one wins), now, socket ids... Returns {code, status, since}: code 0 when the
// stored status stands (online or away), 1 when the user was offline and now has the known
// status (a change to announce), 2 when Redis had no entry for the user (restored; a change
// only if the known status was never announced).
pub(super) const RESTORE: &str = include_str!("lua/restore.lua");

// KEYS: socks:<u> of each user. Returns 1 for each user with a socket anywhere, else 0.
pub(super) const ONLINE: &str = include_str!("lua/online.lua");

pub(super) const DISCONNECT: &str = include_str!("lua/disconnect.lua");

pub(super) const SET_STATUS: &str = include_str!("lua/set_status.lua");

pub(super) const SET_LOCATION: &str = include_str!("lua/set_location.lua");

pub(super) const GET: &str = include_str!("lua/get.lua");

// KEYS: pending. ARGV: prefix, now, batch, retention ms.
pub(super) const CLAIM_DUE: &str = include_str!("lua/claim_due.lua");

// KEYS: inst:<id>, instances. ARGV: id, now, ttl ms. Returns whether the instance was
// still registered.
pub(super) const HEARTBEAT_SCRIPT: &str = include_str!("lua/heartbeat.lua");

// KEYS: instances. ARGV: prefix, own id, claim ms. Returns id, last heartbeat pairs of the
// dead instances this caller now reaps.
pub(super) const FIND_DEAD: &str = include_str!("lua/find_dead.lua");

// Removes one batch of an instance's sockets. KEYS: inst:<id>:socks, pending, instances.
// ARGV: prefix, cursor, left at, due, id. Returns the next cursor; at "0" the instance is
// forgotten.
pub(super) const FORGET_BATCH: &str = include_str!("lua/forget_batch.lua");

pub(super) const LIST_SOCKETS: &str = include_str!("lua/list_sockets.lua");

pub(super) const DELETE: &str = include_str!("lua/delete.lua");

pub(super) struct Scripts {
    pub(super) restore: Script,
    pub(super) online: Script,
    pub(super) disconnect: Script,
    pub(super) set_status: Script,
    pub(super) set_location: Script,
    pub(super) get: Script,
    pub(super) claim_due: Script,
    pub(super) heartbeat: Script,
    pub(super) find_dead: Script,
    pub(super) forget_batch: Script,
    pub(super) list_sockets: Script,
    pub(super) delete: Script,
}
