//! Starting and stopping the servers under test (Trestle, the Node reference server, Redis),
//! and reading their CPU, memory and file descriptors from /proc.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::http_get;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Trestle,
    Node,
    Redis,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Trestle => "trestle",
            Kind::Node => "node",
            Kind::Redis => "redis",
        }
    }
}

/// Where the servers come from and what they all get.
pub struct Setup {
    pub work: PathBuf,
    pub trestle_bin: PathBuf,
    pub ref_dir: PathBuf,
    pub secret: String,
    pub api_key: String,
    pub server_core: Option<usize>,
    pub trestle_env: Vec<(String, String)>,
    pub seq: std::cell::Cell<u32>,
}

/// A running server; killed when dropped, so an error or panic leaves nothing behind.
pub struct Server {
    pub kind: Kind,
    pub port: u16,
    pub pid: u32,
    pub log: PathBuf,
    pub described: String,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Setup {
    pub fn new(
        work: PathBuf,
        trestle_src: &Path,
        ref_dir: PathBuf,
        server_core: Option<usize>,
        trestle_env: Vec<(String, String)>,
    ) -> Result<Setup, String> {
        fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        // A copy, as run.mjs does: the binary under target/ may be rebuilt during the run.
        let trestle_bin = work.join("trestle");
        if trestle_src.exists() {
            fs::copy(trestle_src, &trestle_bin)
                .map_err(|e| format!("copy {}: {e}", trestle_src.display()))?;
        }
        Ok(Setup {
            work,
            trestle_bin,
            ref_dir,
            secret: random_hex(24),
            api_key: random_hex(24),
            server_core,
            trestle_env,
            seq: std::cell::Cell::new(0),
        })
    }

    fn pinned(&self, program: &Path) -> Command {
        match self.server_core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Starts one server, on a free port, and waits until `/health` answers 200.
    pub async fn start(
        &self,
        kind: Kind,
        redis_url: Option<&str>,
        database_url: Option<&str>,
    ) -> Result<Server, String> {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        let port = free_port();
        let dir = self.work.join(format!("{}-{n}", kind.name()));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let log = self.work.join(format!("{}-{n}.log", kind.name()));
        let out = fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd;
        let mut env: Vec<(String, String)> = Vec::new();
        match kind {
            Kind::Redis => {
                cmd = self.pinned(Path::new("redis-server"));
                cmd.args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                cmd.args(["--maxclients", "10000"]);
                cmd.current_dir(&dir);
            }
            Kind::Trestle | Kind::Node => {
                if kind == Kind::Trestle {
                    cmd = self.pinned(&self.trestle_bin);
                } else {
                    cmd = self.pinned(Path::new("node"));
                    cmd.arg("server.mjs");
                }
                cmd.current_dir(if kind == Kind::Node {
                    self.ref_dir.clone()
                } else {
                    dir.clone()
                });
                for (k, _) in std::env::vars() {
                    let drop = [
                        "REDIS_",
                        "JWT_",
                        "ACCESS_HOOK_",
                        "AUTH_REQUIRED",
                        "TRUST_PROXY",
                        "RECOVERY_",
                        "DATABASE_URL",
                    ]
                    .iter()
                    .any(|p| k.starts_with(p));
                    if drop {
                        cmd.env_remove(k);
                    }
                }
                // run.mjs's environment, plus a per-user room cap off (Trestle only: the
                // fan-out's receivers are one user) and a data folder per server.
                for (k, v) in [
                    ("PORT", port.to_string()),
                    ("HOST", "127.0.0.1".into()),
                    ("LOG_FORMAT", "json".into()),
                    ("RUST_LOG", "warn".into()),
                    ("MAX_CONNECTIONS", "200000".into()),
                    ("MAX_CONNECTIONS_PER_IP", "200000".into()),
                    ("RATE_LIMIT_PER_MINUTE", "0".into()),
                    ("MAX_ROOM_SIZE", "0".into()),
                    ("MAX_ROOM_SOCKETS_PER_USER", "0".into()),
                    ("DATA_DIR", dir.join("data").display().to_string()),
                    ("DOCUMENTS_DIR", dir.join("documents").display().to_string()),
                ] {
                    env.push((k.into(), v));
                }
                if let Some(url) = redis_url {
                    env.push(("REDIS_URL".into(), url.into()));
                }
                if kind == Kind::Trestle {
                    if let Some(url) = database_url {
                        env.push(("DATABASE_URL".into(), url.into()));
                    }
                    env.extend(self.trestle_env.iter().cloned());
                }
                for (k, v) in &env {
                    cmd.env(k, v);
                }
                cmd.env("JWT_SECRET", &self.secret)
                    .env("API_KEY", &self.api_key);
            }
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", kind.name()))?;
        let pid = child.id();
        let described = format!(
            "{} pid {pid} port {port}{} env {}",
            kind.name(),
            self.server_core
                .map(|c| format!(" (taskset -c {c})"))
                .unwrap_or_default(),
            env.iter()
                .map(|(k, v)| if k == "DATABASE_URL" {
                    format!("{k}=(set)")
                } else {
                    format!("{k}={v}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut srv = Server {
            kind,
            port,
            pid,
            log,
            described,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = srv.child.try_wait() {
                return Err(format!(
                    "{} exited during start ({st}); log {}",
                    kind.name(),
                    srv.log.display()
                ));
            }
            let up = match kind {
                Kind::Redis => redis_ping(port).await,
                _ => matches!(http_get(port, "/health").await, Ok((200, _))),
            };
            if up {
                return Ok(srv);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not up within 30 s; log {}",
                    kind.name(),
                    srv.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").await.is_ok()
        && matches!(tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await, Ok(Ok(n)) if buf[..n].starts_with(b"+PONG"))
}

impl Server {
    /// SIGTERM, then SIGKILL after 20 s. Returns how it ended.
    pub async fn stop(mut self) -> String {
        if let Ok(Some(st)) = self.child.try_wait() {
            return format!("had already exited ({st})");
        }
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return format!("{st}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        "killed after 20 s".into()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lines at warn level or above in its log.
    pub fn warnings(&self) -> (usize, String) {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let bad: Vec<&str> = text
            .lines()
            // Expected whenever the fd limit is below MAX_CONNECTIONS (bench/README.md).
            .filter(|l| !l.contains("MAX_CONNECTIONS lowered"))
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                // Trestle's JSON log levels; the Node server logs with console.error.
                l.contains("\"level\":\"warn")
                    || l.contains("\"level\":\"error")
                    || (!l.starts_with('{') && l.contains("error"))
            })
            .collect();
        (
            bad.len(),
            bad.first()
                .map(|l| l.chars().take(200).collect())
                .unwrap_or_default(),
        )
    }
}

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of the whole process, in seconds.
pub fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let f: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 2..]
        .split(' ')
        .collect();
    let t = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (t(11) + t(12)) / clk_tck()
}

pub fn cpu_sum(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_s(*p)).sum()
}

pub fn rss_kb(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

pub fn fd_count(pid: u32) -> f64 {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as f64)
        .unwrap_or(f64::NAN)
}

pub fn self_cpu_s() -> f64 {
    cpu_s(std::process::id())
}

/// Raises RLIMIT_NOFILE as far as allowed; the servers started afterwards inherit it.
pub fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        let raised = libc::rlimit {
            rlim_cur: want.max(r.rlim_cur),
            rlim_max: want.max(r.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            let soft = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

/// Pins this thread (before the runtime starts, so every later thread too) to one core.
pub fn pin_self(core: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Copies the reference server out of its share and runs `npm ci` once per lockfile, as
/// run.mjs does.
pub fn prepare_reference(src: &Path, dst: &Path) -> Result<(), String> {
    if !src.join("server.mjs").exists() {
        return Err(format!("no reference server in {}", src.display()));
    }
    fs::create_dir_all(dst).map_err(|e| e.to_string())?;
    let copy = Command::new("sh")
        .arg("-c")
        .arg("tar -C \"$1\" --exclude=node_modules -cf - . | tar -C \"$2\" -xf -")
        .arg("sh")
        .arg(src)
        .arg(dst)
        .status()
        .map_err(|e| e.to_string())?;
    if !copy.success() {
        return Err(format!("copying {} failed", src.display()));
    }
    let lock = fs::read(dst.join("package-lock.json")).unwrap_or_default();
    let stamp = dst.join(".loadgen-installed");
    let installed = dst.join("node_modules/socket.io").exists()
        && fs::read(&stamp).ok().as_deref() == Some(&lock[..]);
    if !installed {
        eprintln!("[loadgen] npm ci in {}", dst.display());
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dst)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err("npm ci failed".into());
        }
        fs::write(&stamp, &lock).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A throwaway PostgreSQL (scripts/pg.sh) for Trestle's cluster runs: with REDIS_URL, Trestle
/// refuses a SQLite file that its instances would not share. Stopped when dropped.
pub struct Postgres {
    script: PathBuf,
    dir: PathBuf,
    pub url: String,
}

impl Postgres {
    pub fn start(script: &Path, dir: &Path, core: Option<usize>) -> Result<Postgres, String> {
        let mut cmd = match core {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c.to_string()).arg(script);
                cmd
            }
            None => Command::new(script),
        };
        let out = cmd
            .arg("start")
            .arg(dir)
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} start: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Postgres {
            script: script.to_path_buf(),
            dir: dir.to_path_buf(),
            url,
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}
