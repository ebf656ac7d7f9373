//! The scenarios. Each takes the ports of the running server(s) and returns its figures.
//! Everything runs on one thread (a LocalSet): one task per connection, shared state in
//! Rc/Cell, no locks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::{JoinHandle, spawn_local};
use tokio::time::{MissedTickBehavior, interval, sleep, sleep_until, timeout};

use crate::Opts;
use crate::client::{Client, Hist, In, Poller, ack_of, http_get, now_us, num_after};
use crate::servers::{cpu_sum, fd_count, rss_kb, self_cpu_s};

/// The figures of one scenario against one server (or cluster).
#[derive(Default)]
pub struct Fig {
    pub vals: Vec<(String, f64)>,
    pub steps: Vec<Value>,
    /// What makes the run fail (smoke's exit code): missing deliveries or acks, errors.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl Fig {
    pub fn set(&mut self, k: impl Into<String>, v: f64) {
        self.vals.push((k.into(), v));
    }
}

/// What a scenario needs to know about the servers it runs against.
pub struct Target {
    pub ports: Vec<u16>,
    pub pids: Vec<u32>,
    /// Ports of Trestle instances whose /metrics has `trestle_redis_messages_lost_total`.
    pub metric_ports: Vec<u16>,
    pub secret: String,
}

pub fn token(secret: &str, user: &str, projects: &[String], perms: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 6 * 3600;
    let claims = json!({ "userId": user, "projects": projects, "permissions": perms, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing")
}

/// Aborts the tasks (closing their connections) when dropped.
#[derive(Default)]
pub struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn push(&mut self, h: JoinHandle<()>) {
        self.0.push(h);
    }
    fn close(&mut self) {
        for h in self.0.drain(..) {
            h.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.close();
    }
}

fn inc(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

struct Opened {
    ok: u64,
    errors: u64,
    samples: Vec<String>,
    hist: Hist,
    secs: f64,
}

impl Opened {
    fn report(&self, fig: &mut Fig, what: &str) {
        if self.errors > 0 {
            fig.problems.push(format!(
                "{what}: {} connections failed, e.g. {:?}",
                self.errors, self.samples
            ));
        }
    }
}

/// Opens n websocket clients, `conc` at a time; `on_open` gets each as soon as it is
/// connected (so it answers pings from then on).
async fn open_many(
    n: usize,
    conc: usize,
    port_token: impl Fn(usize) -> (u16, String),
    mut on_open: impl FnMut(usize, Client),
) -> Opened {
    let t0 = Instant::now();
    let mut out = Opened {
        ok: 0,
        errors: 0,
        samples: Vec::new(),
        hist: Hist::default(),
        secs: 0.0,
    };
    let mut st = stream::iter(0..n)
        .map(|i| {
            let (port, tok) = port_token(i);
            async move {
                let t = Instant::now();
                let r = Client::connect(port, &tok).await;
                (i, r, t.elapsed())
            }
        })
        .buffer_unordered(conc.max(1));
    while let Some((i, r, took)) = st.next().await {
        match r {
            Ok(c) => {
                out.ok += 1;
                out.hist.record(took.as_micros() as u64);
                on_open(i, c);
            }
            Err(e) => {
                out.errors += 1;
                if out.samples.len() < 3 {
                    out.samples.push(e);
                }
            }
        }
    }
    out.secs = t0.elapsed().as_secs_f64();
    out
}

async fn idle_role(mut c: Client, disc: Rc<Cell<u64>>) {
    while c.recv().await.is_some() {}
    inc(&disc);
}

fn self_rss_kb() -> f64 {
    rss_kb(std::process::id())
}

// ------------------------------------------------------------------ 1. idle

pub async fn idle(o: &Opts, t: &Target) -> Fig {
    let mut fig = Fig::default();
    let port = t.ports[0];
    let pid = t.pids[0];
    let disc = Rc::new(Cell::new(0));
    // Warm-up: both servers run their connect path once before the baseline.
    {
        let mut warm = Tasks::default();
        let w = open_many(
            o.batch.min(o.conns),
            o.batch,
            |i| {
                (
                    port,
                    token(&t.secret, &format!("w{i}"), &[format!("w{i}")], &[]),
                )
            },
            |_, c| warm.push(spawn_local(idle_role(c, Rc::new(Cell::new(0))))),
        )
        .await;
        w.report(&mut fig, "warm-up");
    }
    sleep(Duration::from_secs(1)).await;
    let rss0 = rss_kb(pid);
    let cpu0 = cpu_sum(&t.pids);
    let self_rss0 = self_rss_kb();
    let mut tasks = Tasks::default();
    // Each connection is its own user, in its own rooms (project:i{i} and the per-user rooms):
    // presence and room bookkeeping are per connection, as with real idle mobile clients.
    let opened = open_many(
        o.conns,
        o.batch,
        |i| {
            (
                port,
                token(&t.secret, &format!("i{i}"), &[format!("i{i}")], &[]),
            )
        },
        |_, c| tasks.push(spawn_local(idle_role(c, disc.clone()))),
    )
    .await;
    let cpu1 = cpu_sum(&t.pids);
    sleep(Duration::from_secs_f64(o.settle)).await;
    let rss1 = rss_kb(pid);
    let self_rss1 = self_rss_kb();
    let n = opened.ok as f64;
    let still = opened.ok - disc.get();
    tasks.close();
    sleep(Duration::from_secs_f64(o.settle)).await;
    let rss2 = rss_kb(pid);
    opened.report(&mut fig, "idle");
    if disc.get() > 0 {
        fig.problems.push(format!(
            "{} idle connections were closed by the server",
            disc.get()
        ));
    }
    fig.set("connections", n);
    fig.set("rss_before_mb", rss0 / 1024.0);
    fig.set("rss_with_conns_mb", rss1 / 1024.0);
    fig.set("kb_per_conn", (rss1 - rss0) / n);
    fig.set("rss_after_close_mb", rss2 / 1024.0);
    fig.set("connect_cpu_ms_per_conn", (cpu1 - cpu0) * 1000.0 / n);
    fig.set("connect_rate_per_s", n / opened.secs);
    fig.set("still_open", still as f64);
    // Progress only: the generator's allocator reuses the memory of earlier scenarios, so
    // this is only the generator's cost in the first run of a process.
    eprintln!(
        "[loadgen]   generator RSS grew {:.1} KB per connection",
        (self_rss1 - self_rss0) / n
    );
    fig
}

// ------------------------------------------------------------------ 2. connect storm

pub async fn connect_storm(o: &Opts, t: &Target) -> Fig {
    let mut fig = Fig::default();
    let port = t.ports[0];
    let disc = Rc::new(Cell::new(0));
    // Tokens are signed before the clock starts: the storm measures the server.
    let tokens: Vec<String> = (0..o.storm_conns)
        .map(|i| token(&t.secret, &format!("c{i}"), &[format!("c{i}")], &[]))
        .collect();
    let cpu0 = cpu_sum(&t.pids);
    let mut tasks = Tasks::default();
    let opened = open_many(
        o.storm_conns,
        o.storm_concurrency,
        |i| (port, tokens[i].clone()),
        |_, c| tasks.push(spawn_local(idle_role(c, disc.clone()))),
    )
    .await;
    let cpu1 = cpu_sum(&t.pids);
    tasks.close();
    opened.report(&mut fig, "storm");
    let n = opened.ok as f64;
    fig.set("connections", n);
    fig.set("errors", opened.errors as f64);
    fig.set("conns_per_s", n / opened.secs);
    fig.set("connect_p50_ms", opened.hist.pct_ms(50.0));
    fig.set("connect_p99_ms", opened.hist.pct_ms(99.0));
    fig.set("cpu_ms_per_conn", (cpu1 - cpu0) * 1000.0 / n);
    sleep(Duration::from_secs(1)).await;
    fig
}

// ------------------------------------------------------------------ 3 and 7. fan-out

#[derive(Default)]
struct Fan {
    step: Cell<u64>,
    counts: RefCell<Vec<u32>>,
    last: RefCell<Vec<u64>>,
    hist: RefCell<Hist>,
    poll_hist: RefCell<Hist>,
    delivered: Cell<u64>,
    late: Cell<u64>,
    out_of_order: Cell<u64>,
    last_recv: Cell<u64>,
    disc: Cell<u64>,
}

impl Fan {
    fn reset(&self, k: u64, n: usize) {
        self.step.set(k);
        *self.counts.borrow_mut() = vec![0; n];
        *self.last.borrow_mut() = vec![0; n];
        *self.hist.borrow_mut() = Hist::default();
        *self.poll_hist.borrow_mut() = Hist::default();
        self.delivered.set(0);
        self.late.set(0);
        self.out_of_order.set(0);
    }

    fn on_text(&self, i: usize, t: &str, polling: bool) {
        if !t.starts_with("42[\"tick\"") {
            return;
        }
        let (Some(k), Some(s), Some(ts)) = (
            num_after(t, "\"k\":"),
            num_after(t, "\"s\":"),
            num_after(t, "\"t\":"),
        ) else {
            return;
        };
        if k != self.step.get() {
            inc(&self.late);
            return;
        }
        let now = now_us();
        inc(&self.delivered);
        self.last_recv.set(now);
        if let Some(c) = self.counts.borrow_mut().get_mut(i) {
            *c += 1;
        }
        if let Some(l) = self.last.borrow_mut().get_mut(i) {
            if s < *l {
                inc(&self.out_of_order);
            }
            *l = s + 1;
        }
        let h = if polling { &self.poll_hist } else { &self.hist };
        h.borrow_mut().record(now.saturating_sub(ts));
    }
}

async fn fan_ws_role(i: usize, mut c: Client, fan: Rc<Fan>) {
    loop {
        match c.recv().await {
            Some(In::Text(t)) => fan.on_text(i, &t, false),
            Some(In::Binary(_)) => {}
            None => return inc(&fan.disc),
        }
    }
}

async fn fan_poll_role(i: usize, mut p: Poller, fan: Rc<Fan>) {
    loop {
        match p.poll().await {
            Ok(packets) => {
                for t in packets {
                    fan.on_text(i, &t, true);
                }
            }
            Err(_) => return inc(&fan.disc),
        }
    }
}

/// The publisher: `broadcast_room` to the room at a set rate, acks counted as they come.
struct Publisher {
    c: Client,
    room: String,
    next_id: u64,
    acked_ok: u64,
    acked_bad: u64,
    bad_sample: Option<String>,
    closed: bool,
}

impl Publisher {
    fn on_msg(&mut self, m: Option<In>) {
        match m {
            Some(In::Text(t)) => {
                if let Some((_, body)) = ack_of(&t) {
                    if body.contains("\"success\":true") {
                        self.acked_ok += 1;
                    } else {
                        self.acked_bad += 1;
                        self.bad_sample
                            .get_or_insert_with(|| body.chars().take(200).collect());
                    }
                }
            }
            Some(In::Binary(_)) => {}
            None => self.closed = true,
        }
    }

    /// Sends `total` ticks of step k at `rate` per second; `every` runs `on_sample` (the
    /// soak's readings) on its period meanwhile.
    async fn publish(
        &mut self,
        k: u64,
        rate: f64,
        total: u64,
        every: Option<Duration>,
        on_sample: &mut dyn FnMut(),
    ) -> u64 {
        let t0 = Instant::now();
        let mut sent = 0u64;
        let mut tick = interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut sample = interval(every.unwrap_or(Duration::from_secs(3600 * 24)));
        sample.tick().await;
        while sent < total && !self.closed {
            tokio::select! {
                _ = tick.tick() => {
                    let due = ((t0.elapsed().as_secs_f64() * rate) as u64).min(total);
                    while sent < due {
                        self.next_id += 1;
                        let text = format!(
                            "42{}[\"broadcast_room\",\"{}\",\"tick\",{{\"k\":{k},\"s\":{sent},\"t\":{}}}]",
                            self.next_id, self.room, now_us()
                        );
                        if self.c.feed(text).await.is_err() {
                            self.closed = true;
                            break;
                        }
                        sent += 1;
                    }
                    if self.c.flush().await.is_err() {
                        self.closed = true;
                    }
                }
                m = self.c.recv() => self.on_msg(m),
                _ = sample.tick() => on_sample(),
            }
        }
        sent
    }

    /// Reads acks until `until` says stop or the deadline passes.
    async fn drain(&mut self, deadline: Instant, until: &dyn Fn(&Publisher) -> bool) {
        while !until(self) && Instant::now() < deadline && !self.closed {
            tokio::select! {
                m = self.c.recv() => self.on_msg(m),
                _ = sleep(Duration::from_millis(5)) => {}
            }
        }
    }
}

pub async fn metric_sum(ports: &[u16], name: &str) -> f64 {
    let mut sum = 0.0;
    for p in ports {
        if let Ok((_, body)) = http_get(*p, "/metrics").await {
            sum += body
                .lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
    }
    sum
}

const LOST_METRIC: &str = "trestle_redis_messages_lost_total";

struct FanSetup {
    fan: Rc<Fan>,
    publisher: Publisher,
    receivers: usize,
    _tasks: Tasks,
}

/// Receivers (the first `polling` of them on long-polling) spread over the ports in turn,
/// all one user in `project:{room}`; the publisher on the first port.
async fn fan_setup(
    o: &Opts,
    t: &Target,
    room: &str,
    receivers: usize,
    polling: usize,
    fig: &mut Fig,
) -> Option<FanSetup> {
    let fan = Rc::new(Fan::default());
    let rx_token = token(&t.secret, &format!("{room}-rx"), &[room.to_string()], &[]);
    let mut tasks = Tasks::default();
    let polling = polling.min(receivers);
    let ports = &t.ports;
    let mut poll_errors = Vec::new();
    {
        let mut st = stream::iter(0..polling)
            .map(|i| {
                let tok = rx_token.clone();
                let port = ports[i % ports.len()];
                async move { (i, Poller::connect(port, &tok).await) }
            })
            .buffer_unordered(o.batch.max(1));
        while let Some((i, r)) = st.next().await {
            match r {
                Ok(p) => tasks.push(spawn_local(fan_poll_role(i, p, fan.clone()))),
                Err(e) => poll_errors.push(e),
            }
        }
    }
    if !poll_errors.is_empty() {
        fig.problems.push(format!(
            "{} polling receivers failed, e.g. {}",
            poll_errors.len(),
            poll_errors[0]
        ));
    }
    let opened = open_many(
        receivers - polling,
        o.batch,
        |i| (ports[(i + polling) % ports.len()], rx_token.clone()),
        |i, c| tasks.push(spawn_local(fan_ws_role(i + polling, c, fan.clone()))),
    )
    .await;
    opened.report(fig, "receivers");
    let pub_token = token(
        &t.secret,
        &format!("{room}-pub"),
        &[room.to_string()],
        &["room_broadcast"],
    );
    let c = match Client::connect(ports[0], &pub_token).await {
        Ok(c) => c,
        Err(e) => {
            fig.problems.push(format!("publisher: {e}"));
            return None;
        }
    };
    let connected = receivers - poll_errors.len() - opened.errors as usize;
    let publisher = Publisher {
        c,
        room: format!("project:{room}"),
        next_id: 0,
        acked_ok: 0,
        acked_bad: 0,
        bad_sample: None,
        closed: false,
    };
    Some(FanSetup {
        fan,
        publisher,
        receivers: connected,
        _tasks: tasks,
    })
}

/// Stepped fan-out: single server (`fanout`) or a cluster (`cluster2`, `cluster3`).
pub async fn fanout(o: &Opts, t: &Target, rates: &[u64], polling: usize) -> Fig {
    let mut fig = Fig::default();
    let Some(mut s) = fan_setup(o, t, "fan", o.receivers, polling, &mut fig).await else {
        return fig;
    };
    let m = s.receivers as u64;
    fig.set("receivers", m as f64);
    fig.set("polling_receivers", polling.min(o.receivers) as f64);
    let mut max_clean = 0.0f64;
    let mut total_lost = 0u64;
    let mut redis_lost_total = 0.0;
    // Step 1 is a warm-up (JIT, Redis subscriptions), not reported.
    let mut plan = vec![(
        rates.first().copied().unwrap_or(50).min(50),
        o.step_secs.min(1.0),
        false,
    )];
    plan.extend(rates.iter().map(|r| (*r, o.step_secs, true)));
    for (k, (rate, secs, report)) in plan.into_iter().enumerate() {
        let k = k as u64 + 1;
        s.fan.reset(k, o.receivers);
        let disc0 = s.fan.disc.get();
        let alive = m - disc0.min(m);
        let cpu0 = cpu_sum(&t.pids);
        let self0 = self_cpu_s();
        let lost0 = metric_sum(&t.metric_ports, LOST_METRIC).await;
        let ok0 = s.publisher.acked_ok;
        let bad0 = s.publisher.acked_bad;
        let start = now_us();
        let total = (rate as f64 * secs).round().max(1.0) as u64;
        let sent = s
            .publisher
            .publish(k, rate as f64, total, None, &mut || {})
            .await;
        let send_end = now_us();
        let expected = sent * alive;
        let fan = s.fan.clone();
        let deadline = Instant::now() + Duration::from_secs_f64(o.drain_secs);
        s.publisher
            .drain(deadline, &|p| {
                fan.delivered.get() >= expected && p.acked_ok + p.acked_bad >= p.next_id
            })
            .await;
        let cpu = cpu_sum(&t.pids) - cpu0;
        let self_cpu = self_cpu_s() - self0;
        let redis_lost = metric_sum(&t.metric_ports, LOST_METRIC).await - lost0;
        let delivered = s.fan.delivered.get();
        let window = (s.fan.last_recv.get().max(send_end) - start) as f64 / 1e6;
        let (p50, p99, max, poll_p99) = {
            let h = s.fan.hist.borrow();
            (
                h.pct_ms(50.0),
                h.pct_ms(99.0),
                h.pct_ms(100.0),
                s.fan.poll_hist.borrow().pct_ms(99.0),
            )
        };
        let lost = expected.saturating_sub(delivered);
        let disc = s.fan.disc.get() - disc0;
        let acks_bad = s.publisher.acked_bad - bad0;
        let acks_missing = sent - (s.publisher.acked_ok - ok0) - acks_bad;
        let delivered_rate = delivered as f64 / window;
        let saturated = lost > 0
            || p99.is_nan()
            || p99 > o.sat_p99_ms
            || delivered_rate < 0.9 * rate as f64 * alive as f64;
        eprintln!(
            "[loadgen]   {rate:>5} msg/s: delivered {delivered}/{expected} ({delivered_rate:.0}/s) p50 {:.1} ms p99 {p99:.1} ms cpu {cpu:.2} s{}",
            p50,
            if saturated { " (saturated)" } else { "" }
        );
        if !report {
            if lost > 0 || disc > 0 {
                fig.problems.push(format!(
                    "warm-up step: {lost} deliveries lost, {disc} disconnects"
                ));
            }
            continue;
        }
        let row = json!({
            "rate": rate, "sent": sent, "receivers": alive, "expected": expected, "delivered": delivered,
            "lost": lost, "late": s.fan.late.get(), "out_of_order": s.fan.out_of_order.get(),
            "delivered_per_s": delivered_rate, "p50_ms": p50, "p99_ms": p99,
            "max_ms": max, "poll_p99_ms": poll_p99,
            "server_cpu_s": cpu, "cpu_s_per_100k": cpu / delivered as f64 * 1e5,
            "loadgen_cpu_s": self_cpu, "disconnects": disc, "acks_failed": acks_bad, "acks_missing": acks_missing,
            "redis_lost": redis_lost, "saturated": saturated,
        });
        fig.set(format!("delivered_per_s@{rate}"), delivered_rate);
        fig.set(format!("p99_ms@{rate}"), p99);
        fig.set(
            format!("cpu_s_per_100k@{rate}"),
            cpu / delivered as f64 * 1e5,
        );
        if lost > 0 {
            fig.set(format!("lost@{rate}"), lost as f64);
        }
        if !t.metric_ports.is_empty() {
            fig.set(format!("redis_lost@{rate}"), redis_lost);
        }
        fig.steps.push(row);
        total_lost += lost;
        redis_lost_total += redis_lost;
        if disc > 0 {
            fig.problems
                .push(format!("{rate} msg/s: {disc} receivers disconnected"));
        }
        if acks_bad > 0 {
            fig.problems.push(format!(
                "{rate} msg/s: {acks_bad} broadcast_room acks failed, e.g. {}",
                s.publisher.bad_sample.clone().unwrap_or_default()
            ));
        }
        if lost > 0 {
            fig.notes.push(format!(
                "{rate} msg/s: {lost} of {expected} deliveries lost"
            ));
        }
        if !saturated {
            max_clean = max_clean.max(rate as f64);
        }
        if delivered == 0 {
            fig.problems
                .push(format!("{rate} msg/s: nothing delivered"));
        }
        if s.publisher.closed {
            fig.problems
                .push("the publisher's connection closed".into());
            break;
        }
        if saturated && !o.no_stop {
            break;
        }
        sleep(Duration::from_millis(500)).await;
    }
    if let Some(first) = fig.steps.first()
        && first["lost"].as_u64().unwrap_or(0) > 0
    {
        fig.problems
            .push("deliveries lost at the lowest rate".into());
    }
    fig.set("max_clean_rate", max_clean);
    fig.set("lost_total", total_lost as f64);
    if !t.metric_ports.is_empty() {
        fig.set("redis_lost_total", redis_lost_total);
    }
    fig
}

// ------------------------------------------------------------------ 4. typing

#[derive(Default)]
struct Typing {
    sends: Cell<u64>,
    received: Cell<u64>,
    last_send: RefCell<Vec<u64>>,
    hist: RefCell<Hist>,
    disc: Cell<u64>,
    room_size: usize,
}

impl Typing {
    fn on_text(&self, t: &str) {
        let Some(rest) = t.strip_prefix("42[\"typing_comment\"") else {
            return;
        };
        let Some(at) = rest.find("\"userId\":\"t") else {
            return;
        };
        let id = &rest[at + 11..];
        let (Some(r), Some(j)) = (
            num_after(id, ""),
            id.find('-').and_then(|d| num_after(&id[d + 1..], "")),
        ) else {
            return;
        };
        inc(&self.received);
        let sent = self
            .last_send
            .borrow()
            .get(r as usize * self.room_size + j as usize)
            .copied()
            .unwrap_or(0);
        if sent > 0 {
            self.hist.borrow_mut().record(now_us().saturating_sub(sent));
        }
    }
}

async fn typing_role(
    idx: usize,
    mut c: Client,
    ty: Rc<Typing>,
    mut phase: watch::Receiver<Option<(Instant, Duration, usize)>>,
) {
    let room = format!("project:t{}", idx / ty.room_size);
    let mut next: Option<Instant> = None;
    let mut period = Duration::ZERO;
    loop {
        let due = next;
        tokio::select! {
            m = c.recv() => match m {
                Some(In::Text(t)) => ty.on_text(&t),
                Some(In::Binary(_)) => {}
                None => return inc(&ty.disc),
            },
            r = phase.changed() => {
                if r.is_err() {
                    return;
                }
                let v = *phase.borrow_and_update();
                // Spread over the period, so the rate is even.
                next = v.map(|(start, p, n)| {
                    period = p;
                    start + p.mul_f64(idx as f64 / n as f64)
                });
            }
            _ = async { match due { Some(at) => sleep_until(at.into()).await, None => std::future::pending().await } } => {
                ty.last_send.borrow_mut()[idx] = now_us();
                if c.send(format!("42[\"typing_comment\",{{\"room\":\"{room}\"}}]")).await.is_err() {
                    return inc(&ty.disc);
                }
                inc(&ty.sends);
                next = due.map(|d| d + period);
            }
        }
    }
}

pub async fn typing(o: &Opts, t: &Target) -> Fig {
    let mut fig = Fig::default();
    let size = o.typing_room_size.max(2);
    let n = o.typing_rooms * size;
    let ty = Rc::new(Typing {
        room_size: size,
        last_send: RefCell::new(vec![0; n]),
        ..Default::default()
    });
    let (tx, rx) = watch::channel(None);
    let mut tasks = Tasks::default();
    let port = t.ports[0];
    let opened = open_many(
        n,
        o.batch,
        |i| {
            (
                port,
                token(
                    &t.secret,
                    &format!("t{}-{}", i / size, i % size),
                    &[format!("t{}", i / size)],
                    &[],
                ),
            )
        },
        |i, c| tasks.push(spawn_local(typing_role(i, c, ty.clone(), rx.clone()))),
    )
    .await;
    opened.report(&mut fig, "typing users");
    sleep(Duration::from_secs(1)).await;
    // Each user types at most every 350 ms: the servers relay one typing_comment per user
    // and room per 300 ms, so a faster user would be throttled, not measured.
    let period = Duration::from_secs_f64((n as f64 / o.typing_rate.max(1.0)).max(0.35));
    if period.as_secs_f64() > n as f64 / o.typing_rate.max(1.0) {
        fig.notes.push(format!(
            "typing rate capped at {:.0}/s (one event per user per 350 ms)",
            n as f64 / 0.35
        ));
    }
    let cpu0 = cpu_sum(&t.pids);
    let _ = tx.send(Some((
        Instant::now() + Duration::from_millis(100),
        period,
        n,
    )));
    sleep(Duration::from_secs_f64(o.typing_secs)).await;
    let _ = tx.send(None);
    sleep(Duration::from_secs_f64(o.drain_secs.min(2.0))).await;
    let cpu = cpu_sum(&t.pids) - cpu0;
    let sends = ty.sends.get();
    let expected = sends * (size as u64 - 1);
    let got = ty.received.get();
    let hist = ty.hist.borrow();
    fig.set("users", opened.ok as f64);
    fig.set("typing_events_per_s", sends as f64 / o.typing_secs);
    fig.set("deliveries", got as f64);
    fig.set("lost", expected.saturating_sub(got) as f64);
    fig.set("p50_ms", hist.pct_ms(50.0));
    fig.set("p99_ms", hist.pct_ms(99.0));
    fig.set("cpu_ms_per_1k_events", cpu * 1e6 / sends as f64);
    if got == 0 {
        fig.problems.push("no typing_comment delivered".into());
    } else if got < expected {
        fig.problems.push(format!(
            "{} of {expected} typing deliveries lost",
            expected - got
        ));
    }
    if ty.disc.get() > 0 {
        fig.problems
            .push(format!("{} typing users disconnected", ty.disc.get()));
    }
    fig
}

// ------------------------------------------------------------------ 5. acked requests

#[derive(Default)]
struct Acked {
    ok: Cell<u64>,
    failed: Cell<u64>,
    timeouts: Cell<u64>,
    hist: RefCell<Hist>,
    from_us: Cell<u64>,
    to_us: Cell<u64>,
    stop: Cell<bool>,
    disc: Cell<u64>,
    sample: RefCell<Option<String>>,
}

impl Acked {
    fn fail(&self, what: String) {
        inc(&self.failed);
        self.sample.borrow_mut().get_or_insert(what);
    }
}

/// One request and its ack; pings answered and other events skipped meanwhile.
async fn call(c: &mut Client, id: u64, event: &str, arg: &str) -> Result<String, String> {
    c.send(format!("42{id}[\"{event}\",{arg}]")).await?;
    let wait = async {
        loop {
            match c.recv().await {
                Some(In::Text(t)) => {
                    if let Some((got, body)) = ack_of(&t)
                        && got == id
                    {
                        return Ok(body.to_string());
                    }
                }
                Some(In::Binary(_)) => {}
                None => return Err("connection closed".to_string()),
            }
        }
    };
    timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| "ack timeout (10 s)".to_string())?
}

async fn acked_role(mut c: Client, st: Rc<Acked>, leave_too: bool, pause: Duration) {
    let mut id = 0;
    while !st.stop.get() {
        let t0 = now_us();
        let mut ok = true;
        let calls: &[(&str, &str)] = if leave_too {
            &[
                ("join_room", "\"project:1\""),
                ("join_room", "\"project:1:comments\""),
                ("leave_room", "\"project:1:comments\""),
            ]
        } else {
            &[("join_room", "\"project:1\"")]
        };
        for (event, arg) in calls {
            id += 1;
            match call(&mut c, id, event, arg).await {
                Ok(body) if body.contains("\"success\":true") => {}
                Ok(body) => {
                    ok = false;
                    st.fail(body.chars().take(200).collect());
                }
                Err(e) if e.contains("timeout") => {
                    ok = false;
                    inc(&st.timeouts);
                }
                Err(_) => return inc(&st.disc),
            }
        }
        let done = now_us();
        if ok && t0 >= st.from_us.get() && done <= st.to_us.get() {
            st.ok.set(st.ok.get() + calls.len() as u64);
            st.hist.borrow_mut().record(done - t0);
        }
        if !pause.is_zero() {
            sleep(pause).await;
        }
    }
}

pub async fn acked(o: &Opts, t: &Target) -> Fig {
    let mut fig = Fig::default();
    let st = Rc::new(Acked {
        from_us: Cell::new(u64::MAX),
        to_us: Cell::new(0),
        ..Default::default()
    });
    let leave_too = o.ack_mode == "join-leave";
    let mut tasks = Tasks::default();
    let port = t.ports[0];
    let opened = open_many(
        o.ack_clients,
        o.batch,
        |i| {
            (
                port,
                token(&t.secret, &format!("a{i}"), &["1".to_string()], &[]),
            )
        },
        |_, c| {
            tasks.push(spawn_local(acked_role(
                c,
                st.clone(),
                leave_too,
                Duration::ZERO,
            )))
        },
    )
    .await;
    opened.report(&mut fig, "ack clients");
    sleep(Duration::from_secs_f64(o.ack_warmup)).await;
    let from = now_us();
    st.from_us.set(from);
    st.to_us.set(from + (o.ack_secs * 1e6) as u64);
    let cpu0 = cpu_sum(&t.pids);
    let self0 = self_cpu_s();
    sleep(Duration::from_secs_f64(o.ack_secs)).await;
    let cpu = cpu_sum(&t.pids) - cpu0;
    let self_cpu = self_cpu_s() - self0;
    st.stop.set(true);
    sleep(Duration::from_millis(500)).await;
    tasks.close();
    let acks = st.ok.get();
    let hist = st.hist.borrow();
    fig.set("clients", opened.ok as f64);
    fig.set("acks_per_s", acks as f64 / o.ack_secs);
    fig.set("p50_ms", hist.pct_ms(50.0));
    fig.set("p99_ms", hist.pct_ms(99.0));
    fig.set("server_cpu_s", cpu);
    fig.set("cpu_ms_per_1k_acks", cpu * 1e6 / acks as f64);
    fig.set("loadgen_cpu_s", self_cpu);
    if acks == 0 {
        fig.problems.push("no acks".into());
    }
    if st.failed.get() + st.timeouts.get() > 0 {
        fig.problems.push(format!(
            "{} acks failed, {} timed out, e.g. {}",
            st.failed.get(),
            st.timeouts.get(),
            st.sample.borrow().clone().unwrap_or_default()
        ));
    }
    if st.disc.get() > 0 {
        fig.problems
            .push(format!("{} ack clients disconnected", st.disc.get()));
    }
    fig
}

// ------------------------------------------------------------------ 6. documents

fn first_ack(body: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("ack {body}: {e}"))?;
    let a = v.get(0).cloned().unwrap_or(Value::Null);
    if a["success"] != Value::Bool(true) {
        return Err(format!("ack {body}"));
    }
    Ok(a)
}

pub async fn documents(o: &Opts, t: &Target) -> Fig {
    let mut fig = Fig::default();
    match documents_inner(o, t, &mut fig).await {
        Ok(()) => {}
        Err(e) => fig.problems.push(format!("documents: {e}")),
    }
    fig
}

async fn documents_inner(o: &Opts, t: &Target, fig: &mut Fig) -> Result<(), String> {
    let tok = token(&t.secret, "doc-user", &["1".to_string()], &[]);
    let mut c = Client::connect(t.ports[0], &tok).await?;
    let size = (o.doc_mb * 1024.0 * 1024.0) as usize;
    // Incompressible bytes (xorshift), so no layer can shortcut them.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    let cpu0 = cpu_sum(&t.pids);
    let start = first_ack(
        &call(
            &mut c,
            next(),
            "document_upload_start",
            &format!(r#"{{"projectId":"1","filename":"bench.bin","size":{size}}}"#),
        )
        .await?,
    )?;
    let upload_id = start["uploadId"].as_str().ok_or("no uploadId")?.to_string();
    let chunk = start["chunkSize"].as_u64().unwrap_or(65536) as usize;
    let t0 = Instant::now();
    for (index, part) in data.chunks(chunk).enumerate() {
        let ack = next();
        c.send(format!(
            r#"451-{ack}["document_upload_chunk",{{"uploadId":"{upload_id}","index":{index},"data":{{"_placeholder":true,"num":0}}}}]"#
        ))
        .await?;
        c.send_binary(part.to_vec()).await?;
        let wait = async {
            loop {
                match c.recv().await {
                    Some(In::Text(t)) => {
                        if let Some((got, body)) = ack_of(&t)
                            && got == ack
                        {
                            return first_ack(body).map(|_| ());
                        }
                    }
                    Some(In::Binary(_)) => {}
                    None => return Err("closed during upload".to_string()),
                }
            }
        };
        timeout(Duration::from_secs(30), wait)
            .await
            .map_err(|_| "chunk ack timeout")??;
    }
    let done = first_ack(
        &call(
            &mut c,
            next(),
            "document_upload_complete",
            &format!(r#"{{"uploadId":"{upload_id}"}}"#),
        )
        .await?,
    )?;
    let up_secs = t0.elapsed().as_secs_f64();
    let cpu_up = cpu_sum(&t.pids) - cpu0;
    let doc_id = done["document"]["id"]
        .as_str()
        .ok_or("no document id")?
        .to_string();
    let cpu1 = cpu_sum(&t.pids);
    let t1 = Instant::now();
    let info = first_ack(
        &call(
            &mut c,
            next(),
            "document_stream",
            &format!(r#"{{"documentId":"{doc_id}","chunkSize":65536}}"#),
        )
        .await?,
    )?;
    let total = info["size"].as_u64().unwrap_or(0) as usize;
    let mut got = 0usize;
    let mut pending_ack: Option<u64> = None;
    let stream = async {
        loop {
            match c.recv().await {
                Some(In::Text(t)) => {
                    // `451-<id>["document_chunk",...]`: the attachment follows, then our ack.
                    if let Some(rest) = t.strip_prefix("451-") {
                        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                        pending_ack = rest[..digits].parse().ok();
                    } else if t.starts_with("42[\"document_complete\"") {
                        return Ok(());
                    }
                }
                Some(In::Binary(b)) => {
                    got += b.len();
                    if let Some(a) = pending_ack.take() {
                        c.send(format!("43{a}[]")).await?;
                    }
                }
                None => return Err("closed during stream".to_string()),
            }
        }
    };
    timeout(Duration::from_secs(120), stream)
        .await
        .map_err(|_| "stream timeout (120 s)")??;
    let down_secs = t1.elapsed().as_secs_f64();
    let cpu_down = cpu_sum(&t.pids) - cpu1;
    if got != size || total != size {
        return Err(format!(
            "streamed {got} bytes (announced {total}), uploaded {size}"
        ));
    }
    let mb = size as f64 / (1024.0 * 1024.0);
    fig.set("size_mb", mb);
    fig.set("upload_mb_s", mb / up_secs);
    fig.set("download_mb_s", mb / down_secs);
    fig.set("upload_cpu_s_per_mb", cpu_up / mb);
    fig.set("download_cpu_s_per_mb", cpu_down / mb);
    Ok(())
}

// ------------------------------------------------------------------ 8. soak

pub async fn soak(o: &Opts, t: &Target) -> Fig {
    let mut fig = Fig::default();
    let port = t.ports[0];
    let pid = t.pids[0];
    let disc = Rc::new(Cell::new(0));
    let mut tasks = Tasks::default();
    let idle = open_many(
        o.soak_conns,
        o.batch,
        |i| {
            (
                port,
                token(&t.secret, &format!("s{i}"), &[format!("s{i}")], &[]),
            )
        },
        |_, c| tasks.push(spawn_local(idle_role(c, disc.clone()))),
    )
    .await;
    idle.report(&mut fig, "soak idle");
    let st = Rc::new(Acked {
        from_us: Cell::new(0),
        to_us: Cell::new(u64::MAX),
        ..Default::default()
    });
    let ackers = open_many(
        o.soak_ack_clients,
        o.batch,
        |i| {
            (
                port,
                token(&t.secret, &format!("sa{i}"), &["1".to_string()], &[]),
            )
        },
        |_, c| {
            tasks.push(spawn_local(acked_role(
                c,
                st.clone(),
                false,
                Duration::from_millis(o.soak_ack_pause_ms),
            )))
        },
    )
    .await;
    ackers.report(&mut fig, "soak ack clients");
    let Some(mut s) = fan_setup(o, t, "soak", o.soak_receivers, o.soak_polling, &mut fig).await
    else {
        return fig;
    };
    s.fan.reset(1, o.soak_receivers);
    let samples: Rc<RefCell<Vec<Value>>> = Rc::default();
    let t0 = Instant::now();
    let cpu0 = cpu_sum(&t.pids);
    let mut take = {
        let samples = samples.clone();
        let fan = s.fan.clone();
        let st = st.clone();
        move || {
            let row = json!({
                "minute": t0.elapsed().as_secs_f64() / 60.0,
                "rss_mb": rss_kb(pid) / 1024.0,
                "fds": fd_count(pid),
                "server_cpu_s": cpu_sum(&[pid]) ,
                "delivered": fan.delivered.get(),
                "acks": st.ok.get(),
            });
            eprintln!("[loadgen]   soak {row}");
            samples.borrow_mut().push(row);
        }
    };
    take();
    let total = (o.soak_rate * o.soak_minutes * 60.0) as u64;
    let sent = s
        .publisher
        .publish(
            1,
            o.soak_rate,
            total,
            Some(Duration::from_secs_f64(o.soak_sample_secs)),
            &mut take,
        )
        .await;
    let fan = s.fan.clone();
    let expected = sent * s.receivers as u64;
    s.publisher
        .drain(
            Instant::now() + Duration::from_secs_f64(o.drain_secs),
            &|_| fan.delivered.get() >= expected,
        )
        .await;
    take();
    st.stop.set(true);
    let cpu = cpu_sum(&t.pids) - cpu0;
    let samples = samples.borrow();
    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    let hours = t0.elapsed().as_secs_f64() / 3600.0;
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    fig.set("minutes", t0.elapsed().as_secs_f64() / 60.0);
    fig.set("idle_conns", idle.ok as f64);
    fig.set("rss_start_mb", f(first, "rss_mb"));
    fig.set("rss_end_mb", f(last, "rss_mb"));
    fig.set(
        "rss_drift_mb_per_h",
        (f(last, "rss_mb") - f(first, "rss_mb")) / hours,
    );
    fig.set("fds_start", f(first, "fds"));
    fig.set("fds_end", f(last, "fds"));
    fig.set("deliveries", s.fan.delivered.get() as f64);
    fig.set(
        "lost",
        expected.saturating_sub(s.fan.delivered.get()) as f64,
    );
    fig.set("acks", st.ok.get() as f64);
    fig.set("server_cpu_s", cpu);
    fig.steps = samples.clone();
    if expected > s.fan.delivered.get() {
        fig.problems.push(format!(
            "soak: {} of {expected} deliveries lost",
            expected - s.fan.delivered.get()
        ));
    }
    if st.ok.get() == 0 || st.failed.get() + st.timeouts.get() > 0 {
        fig.problems.push(format!(
            "soak: {} acks, {} failed, {} timed out",
            st.ok.get(),
            st.failed.get(),
            st.timeouts.get()
        ));
    }
    let d = disc.get() + s.fan.disc.get() + st.disc.get();
    if d > 0 {
        fig.problems
            .push(format!("soak: {d} connections closed by the server"));
    }
    fig
}
