//! `loadgen`: Trestle against the Node reference server, same load, same machine
//! (bench/README.md, "Load generator"). Servers on one core, the generator on another.

mod client;
mod scenarios;
mod servers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use scenarios::{Fig, Target};
use servers::{Kind, Server, Setup};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Trestle vs the Node reference server (bench/README.md)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the chosen scenarios against the chosen servers and print the tables.
    Run(Opts),
    /// A tiny run of every scenario against Trestle only; exit 1 if any misses deliveries or acks.
    Smoke(Opts),
}

#[derive(Args, Clone)]
pub struct Opts {
    /// idle,connect,fanout,typing,acked,documents,cluster,soak (cluster runs --cluster-sizes)
    #[arg(
        long,
        default_value = "idle,connect,fanout,typing,acked,documents,cluster"
    )]
    scenarios: String,
    /// trestle,node
    #[arg(long, default_value = "trestle,node")]
    servers: String,
    /// Runs per server and scenario, interleaved; tables show medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[arg(long, default_value = "target/release/trestle")]
    trestle_bin: PathBuf,
    #[arg(long, default_value = "/work/shared/reference-node")]
    ref_src: PathBuf,
    #[arg(long, default_value = "/tmp/refnode")]
    ref_dir: PathBuf,
    /// Extra environment for Trestle, KEY=VALUE (repeatable), e.g. RECOVERY_MAX_DISCONNECT_MS=0.
    #[arg(long = "trestle-env")]
    trestle_env: Vec<String>,
    /// Core of the servers (and Redis); the generator pins itself to --gen-core.
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    #[arg(long, default_value_t = 1)]
    gen_core: usize,
    /// Pin nothing.
    #[arg(long)]
    no_pin: bool,
    /// Source addresses 127.0.0.1..127.0.0.N, used in turn.
    #[arg(long, default_value_t = 4)]
    sources: u32,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Idle connections (scenario idle).
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Seconds to wait before reading RSS.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    #[arg(long, default_value_t = 10_000)]
    storm_conns: usize,
    /// Connections in flight during the storm.
    #[arg(long, default_value_t = 500)]
    storm_concurrency: usize,
    /// Receivers of the fan-out (single server and cluster).
    #[arg(long, default_value_t = 1000)]
    receivers: usize,
    /// Of those, how many use long-polling (single-server fan-out only). Off by default: a
    /// polling receiver costs the server an HTTP request per delivery batch, which would
    /// blur the CPU per delivery; the soak has polling receivers instead.
    #[arg(long, default_value_t = 0)]
    polling: usize,
    /// Broadcasts per second, step by step, until saturation.
    #[arg(long, default_value = "50,100,200,400,800,1600,3200")]
    rates: String,
    #[arg(long, default_value = "50,100,200,400,800,1600")]
    cluster_rates: String,
    #[arg(long, default_value = "2,3")]
    cluster_sizes: String,
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    /// A step is saturated when p99 exceeds this, anything is lost or under 90% is delivered.
    #[arg(long, default_value_t = 1000.0)]
    sat_p99_ms: f64,
    /// Go on past the first saturated step.
    #[arg(long)]
    no_stop: bool,
    /// Longest wait for the last deliveries of a step.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    #[arg(long, default_value_t = 2000)]
    typing_rooms: usize,
    #[arg(long, default_value_t = 5)]
    typing_room_size: usize,
    /// typing_comment events per second, all users together.
    #[arg(long, default_value_t = 1000.0)]
    typing_rate: f64,
    #[arg(long, default_value_t = 10.0)]
    typing_secs: f64,
    #[arg(long, default_value_t = 100)]
    ack_clients: usize,
    #[arg(long, default_value_t = 10.0)]
    ack_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    ack_warmup: f64,
    /// join (a room already joined) or join-leave (also join and leave project:1:comments).
    #[arg(long, default_value = "join")]
    ack_mode: String,
    /// Document size for upload and streaming, MiB.
    #[arg(long, default_value_t = 16.0)]
    doc_mb: f64,
    #[arg(long, default_value_t = 30.0)]
    soak_minutes: f64,
    #[arg(long, default_value_t = 60.0)]
    soak_sample_secs: f64,
    #[arg(long, default_value_t = 5000)]
    soak_conns: usize,
    #[arg(long, default_value_t = 200)]
    soak_receivers: usize,
    /// Of the soak's receivers, how many use long-polling.
    #[arg(long, default_value_t = 20)]
    soak_polling: usize,
    #[arg(long, default_value_t = 20.0)]
    soak_rate: f64,
    #[arg(long, default_value_t = 20)]
    soak_ack_clients: usize,
    #[arg(long, default_value_t = 200)]
    soak_ack_pause_ms: u64,
    /// PostgreSQL for Trestle's cluster runs; without it, scripts/pg.sh starts a throwaway one.
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long, default_value = "scripts/pg.sh")]
    pg_script: PathBuf,
    /// Also write every figure (with the fan-out steps and soak samples) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the servers' logs and data (the folder is printed).
    #[arg(long)]
    keep_logs: bool,
}

impl Opts {
    /// Smoke: every scenario, Trestle only, a few clients, about a second each.
    fn smoke(mut self) -> Opts {
        self.scenarios = "idle,connect,fanout,typing,acked,documents,cluster,soak".into();
        self.servers = "trestle".into();
        self.repeat = 1;
        self.conns = 50;
        self.batch = 50;
        self.settle = 0.5;
        self.storm_conns = 100;
        self.storm_concurrency = 50;
        self.receivers = 20;
        self.polling = 2;
        self.rates = "50".into();
        self.cluster_rates = "50".into();
        self.cluster_sizes = "2".into();
        self.step_secs = 1.0;
        self.drain_secs = 3.0;
        self.typing_rooms = 5;
        self.typing_room_size = 3;
        self.typing_rate = 10.0;
        self.typing_secs = 1.0;
        self.ack_clients = 5;
        self.ack_secs = 1.0;
        self.ack_warmup = 0.2;
        self.doc_mb = 0.25;
        self.soak_minutes = 3.0 / 60.0;
        self.soak_sample_secs = 1.0;
        self.soak_conns = 20;
        self.soak_receivers = 5;
        self.soak_polling = 2;
        self.soak_ack_clients = 2;
        self
    }
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

struct Run {
    scenario: String,
    server: Kind,
    rep: usize,
    fig: Fig,
}

fn main() {
    let cli = Cli::parse();
    let (opts, smoke) = match cli.cmd {
        Cmd::Run(o) => (o, false),
        Cmd::Smoke(o) => (o.smoke(), true),
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pinned = !opts.no_pin && cores > 1 && servers::pin_self(opts.gen_core);
    let nofile = servers::raise_nofile(1 << 20);
    client::set_sources(opts.sources);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return run(opts, smoke, pinned, nofile).await;
        };
        // Dropping the run drops its servers, whose Drop kills them.
        tokio::select! {
            code = run(opts, smoke, pinned, nofile) => code,
            _ = tokio::signal::ctrl_c() => 130,
            _ = term.recv() => 143,
            _ = hup.recv() => 129,
        }
    });
    if code >= 129 {
        eprintln!("[loadgen] interrupted; servers stopped");
    }
    // The servers are killed by their Drop as the runtime goes away.
    drop(local);
    drop(rt);
    std::process::exit(code);
}

async fn run(o: Opts, smoke: bool, pinned: bool, nofile: u64) -> i32 {
    let kinds: Vec<Kind> = o
        .servers
        .split(',')
        .filter_map(|s| match s.trim() {
            "trestle" => Some(Kind::Trestle),
            "node" => Some(Kind::Node),
            _ => None,
        })
        .collect();
    let mut scenario_names = Vec::new();
    for s in o.scenarios.split(',').map(str::trim) {
        match s {
            "cluster" => scenario_names.extend(
                list::<usize>(&o.cluster_sizes)
                    .iter()
                    .map(|n| format!("cluster{n}")),
            ),
            "idle" | "connect" | "fanout" | "typing" | "acked" | "documents" | "soak" => {
                scenario_names.push(s.to_string())
            }
            "" => {}
            other => {
                eprintln!("unknown scenario {other}");
                return 2;
            }
        }
    }
    if kinds.is_empty() {
        eprintln!("--servers takes trestle,node");
        return 2;
    }
    let work = std::env::temp_dir().join(format!("loadgen-{}", std::process::id()));
    let trestle_env = o
        .trestle_env
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let server_core = (!o.no_pin).then_some(o.server_core);
    let setup = match Setup::new(
        work.clone(),
        &o.trestle_bin,
        o.ref_dir.clone(),
        server_core,
        trestle_env,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("[loadgen] {e}");
            return 1;
        }
    };
    if kinds.contains(&Kind::Trestle) && !o.trestle_bin.exists() {
        eprintln!(
            "[loadgen] no Trestle binary at {} (cargo build --release)",
            o.trestle_bin.display()
        );
        return 1;
    }
    if kinds.contains(&Kind::Node)
        && let Err(e) = servers::prepare_reference(&o.ref_src, &o.ref_dir)
    {
        eprintln!("[loadgen] {e}");
        return 1;
    }
    let has_redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    println!(
        "loadgen: {} core(s); generator {}; servers {}; RLIMIT_NOFILE {nofile}; sources 127.0.0.1..{}; work dir {}",
        cores_text(),
        if pinned {
            format!("on core {}", o.gen_core)
        } else {
            "not pinned".into()
        },
        server_core
            .map(|c| format!("(and Redis) on core {c} (taskset)"))
            .unwrap_or("not pinned".into()),
        o.sources,
        work.display()
    );
    // Kept until the end of the run: stopped by its Drop.
    let mut pg: Option<servers::Postgres> = None;
    let mut database_url = o.database_url.clone();
    if database_url.is_none()
        && has_redis
        && kinds.contains(&Kind::Trestle)
        && scenario_names.iter().any(|s| s.starts_with("cluster"))
    {
        match servers::Postgres::start(&o.pg_script, &work.join("pg"), server_core) {
            Ok(p) => {
                database_url = Some(p.url.clone());
                pg = Some(p);
            }
            Err(e) => eprintln!("[loadgen] no PostgreSQL for Trestle's cluster runs: {e}"),
        }
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut described: Vec<String> = Vec::new();
    for scen in &scenario_names {
        for rep in 0..o.repeat {
            for &kind in &kinds {
                if scen.starts_with("cluster") && !has_redis {
                    println!("[loadgen] {scen}: skipped, no redis-server");
                    continue;
                }
                eprintln!("[loadgen] {scen} / {} (run {})", kind.name(), rep + 1);
                let fig = run_one(
                    &o,
                    &setup,
                    scen,
                    kind,
                    database_url.as_deref(),
                    &mut described,
                )
                .await;
                for p in &fig.problems {
                    eprintln!("[loadgen]   PROBLEM: {p}");
                }
                runs.push(Run {
                    scenario: scen.clone(),
                    server: kind,
                    rep,
                    fig,
                });
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    println!();
    for d in &described {
        println!("ran: {d}");
    }
    let medians = print_tables(&scenario_names, &kinds, &runs, o.repeat);
    if let Some(path) = &o.json {
        let doc = json!({
            "command": std::env::args().collect::<Vec<_>>(),
            "cores": cores_text(),
            "generator_core": pinned.then_some(o.gen_core),
            "server_core": server_core,
            "servers_ran": described,
            "runs": runs.iter().map(|r| json!({
                "scenario": r.scenario, "server": r.server.name(), "rep": r.rep,
                "vals": r.fig.vals.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "steps": r.fig.steps, "problems": r.fig.problems, "notes": r.fig.notes,
            })).collect::<Vec<_>>(),
            "medians": medians,
        });
        match std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default()) {
            Ok(()) => println!("JSON: {}", path.display()),
            Err(e) => eprintln!("[loadgen] writing {}: {e}", path.display()),
        }
    }
    drop(pg);
    if !o.keep_logs {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!("logs: {}", work.display());
    }
    let failed = runs.iter().filter(|r| !r.fig.problems.is_empty()).count();
    if failed > 0 {
        println!("{failed} run(s) had problems (see PROBLEM lines above)");
    }
    if smoke && failed > 0 { 1 } else { 0 }
}

fn cores_text() -> String {
    // Online cores, not this thread's affinity (pinned to one).
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    format!("{n} x {model}")
}

/// Starts what the scenario needs, runs it, stops everything.
async fn run_one(
    o: &Opts,
    setup: &Setup,
    scen: &str,
    kind: Kind,
    db: Option<&str>,
    described: &mut Vec<String>,
) -> Fig {
    let instances: usize = scen
        .strip_prefix("cluster")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let mut redis: Option<Server> = None;
    let mut srvs: Vec<Server> = Vec::new();
    let started = async {
        let url = if instances > 1 {
            let r = setup.start(Kind::Redis, None, None).await?;
            let url = format!("redis://127.0.0.1:{}", r.port);
            described.push(r.described.clone());
            redis = Some(r);
            Some(url)
        } else {
            None
        };
        for _ in 0..instances {
            let s = setup
                .start(kind, url.as_deref(), url.as_ref().and(db))
                .await?;
            described.push(format!("{scen}: {}", s.described));
            srvs.push(s);
        }
        Ok::<(), String>(())
    }
    .await;
    let mut fig = match started {
        Err(e) => {
            let mut f = Fig::default();
            f.problems.push(e);
            f
        }
        Ok(()) => {
            let target = Target {
                ports: srvs.iter().map(|s| s.port).collect(),
                pids: srvs.iter().map(|s| s.pid).collect(),
                metric_ports: if kind == Kind::Trestle && instances > 1 {
                    srvs.iter().map(|s| s.port).collect()
                } else {
                    vec![]
                },
                secret: setup.secret.clone(),
            };
            let rates: Vec<u64> = list(&o.rates);
            match scen {
                "idle" => scenarios::idle(o, &target).await,
                "connect" => scenarios::connect_storm(o, &target).await,
                "fanout" => scenarios::fanout(o, &target, &rates, o.polling).await,
                "typing" => scenarios::typing(o, &target).await,
                "acked" => scenarios::acked(o, &target).await,
                "documents" => scenarios::documents(o, &target).await,
                "soak" => scenarios::soak(o, &target).await,
                _ => scenarios::fanout(o, &target, &list::<u64>(&o.cluster_rates), 0).await,
            }
        }
    };
    if let Some(r) = &redis {
        fig.set("redis_cpu_s", servers::cpu_s(r.pid));
    }
    for mut s in srvs {
        if !s.alive() {
            fig.problems.push(format!(
                "{} exited during the run; log {}",
                s.kind.name(),
                s.log.display()
            ));
        }
        let (n, first) = s.warnings();
        if n > 0 {
            fig.notes.push(format!(
                "{}: {n} warn/error log lines, first: {first}",
                s.kind.name()
            ));
        }
        let how = s.stop().await;
        if !how.contains("exit status: 0") && !how.contains("signal: 15") {
            fig.notes.push(format!("{} stopped: {how}", kind.name()));
        }
    }
    if let Some(r) = redis {
        r.stop().await;
    }
    fig
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// One table per scenario: the median of every figure per server, and Trestle / Node.
fn print_tables(scens: &[String], kinds: &[Kind], runs: &[Run], repeat: usize) -> Value {
    let mut all = serde_json::Map::new();
    for scen in scens {
        let these: Vec<&Run> = runs.iter().filter(|r| &r.scenario == scen).collect();
        if these.is_empty() {
            continue;
        }
        let mut keys: Vec<String> = Vec::new();
        for r in &these {
            for (k, _) in &r.fig.vals {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        let mut med: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
        for kind in kinds {
            let m = med.entry(kind.name()).or_default();
            for k in &keys {
                let vals: Vec<f64> = these
                    .iter()
                    .filter(|r| r.server == *kind)
                    .filter_map(|r| r.fig.vals.iter().find(|(kk, _)| kk == k).map(|(_, v)| *v))
                    .collect();
                m.insert(k.clone(), median(vals));
            }
        }
        println!(
            "\n== {scen} (median of {repeat} run{})",
            if repeat > 1 { "s" } else { "" }
        );
        let mut header = format!("{:<28}", "metric");
        for kind in kinds {
            header += &format!(" {:>12}", kind.name());
        }
        if kinds.len() == 2 {
            header += &format!(" {:>13}", "trestle/node");
        }
        println!("{header}");
        for k in &keys {
            let mut line = format!("{k:<28}");
            for kind in kinds {
                line += &format!(" {:>12}", fmt(med[kind.name()][k]));
            }
            if kinds.len() == 2 {
                let (t, n) = (med["trestle"][k], med["node"][k]);
                line += &format!(" {:>13}", if n != 0.0 { fmt(t / n) } else { "-".into() });
            }
            println!("{line}");
        }
        for r in &these {
            for p in &r.fig.problems {
                println!("  problem ({} run {}): {p}", r.server.name(), r.rep + 1);
            }
            for n in &r.fig.notes {
                println!("  note ({} run {}): {n}", r.server.name(), r.rep + 1);
            }
        }
        all.insert(scen.clone(), json!(med));
    }
    Value::Object(all)
}
