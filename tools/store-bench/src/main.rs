//! store-bench: redb 2 against fjall 3 on the broker's durable-store workload
//! (docs/decisions/0021-embedded-store-redb.md). See README.md.
//!
//! `store-bench all` runs every measurement, each in a child process of its own (so
//! threads, RSS peak and CPU time are that run's alone) and prints tables.
//! `store-bench group ...` and `store-bench backlog ...` run one measurement and print
//! one `RESULT key=value ...` line.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

const CHUNKS: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("chunks");
/// The broker's redb cache (`disk.rs`, `CACHE_BYTES`).
const REDB_CACHE: usize = 16 << 20;
/// fjall's block cache, set to redb's.
const FJALL_CACHE: u64 = 16 << 20;
/// fjall's memtable (default 64 MiB; fjall recommends 8 to 64 MiB).
const FJALL_MEMTABLE: u64 = 8 << 20;

// ---------------------------------------------------------------------------------
// Workload data

/// xorshift64*: deterministic, so every run writes the same bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A pool of message encodings, 40 to 60 bytes each, shaped like what the broker
/// writes per message: identifier u64, expiry u64, a topic and a payload (ASCII
/// digits: about as compressible as small JSON sensor readings, i.e. not much).
struct Messages {
    pool: Vec<Vec<u8>>,
}
impl Messages {
    fn new() -> Self {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let pool = (0..4096)
            .map(|i| {
                let len = 40 + (rng.next() % 21) as usize;
                let mut m = Vec::with_capacity(len);
                m.extend_from_slice(&(i as u64).to_be_bytes());
                m.extend_from_slice(&(1_700_000_000_000u64 + i as u64).to_be_bytes());
                m.extend_from_slice(format!("site/{}/t", i % 97).as_bytes());
                while m.len() < len {
                    m.push(b'0' + (rng.next() % 10) as u8);
                }
                m
            })
            .collect();
        Messages { pool }
    }
    /// A chunk value: envelope (format u8, CRC-32 u32, as `disk.rs`) then `n` messages,
    /// each with a u16 length.
    fn chunk(&self, first: u64, n: usize, out: &mut Vec<u8>) {
        out.clear();
        out.push(1);
        out.extend_from_slice(&[0; 4]);
        for i in 0..n as u64 {
            let m = &self.pool[((first + i) % self.pool.len() as u64) as usize];
            out.extend_from_slice(&(m.len() as u16).to_be_bytes());
            out.extend_from_slice(m);
        }
    }
}

fn client_id(s: usize) -> String {
    format!("client-{s:06}")
}

fn fjall_key(client: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(client.len() + 9);
    k.extend_from_slice(client.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

// ---------------------------------------------------------------------------------
// Process measurements

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn status_kib(field: &str) -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn threads() -> usize {
    fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

/// (apparent bytes, allocated bytes) of every file under `path`.
fn disk_usage(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return (0, 0),
    };
    if md.is_dir() {
        let mut total = (0, 0);
        for e in fs::read_dir(path).unwrap().flatten() {
            let (a, b) = disk_usage(&e.path());
            total.0 += a;
            total.1 += b;
        }
        total
    } else {
        (md.len(), md.blocks() * 512)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

// ---------------------------------------------------------------------------------
// The two stores, behind what the workload needs

enum Store {
    Redb(redb::Database),
    Fjall(fjall::Database, fjall::Keyspace),
}

impl Store {
    fn open(engine: &str, path: &Path) -> Store {
        match engine {
            "redb" => {
                let mut b = redb::Builder::new();
                b.set_cache_size(REDB_CACHE);
                let db = b.create(path).expect("redb open");
                // Create the table, as the broker does on open.
                let tx = db.begin_write().unwrap();
                tx.open_table(CHUNKS).unwrap();
                tx.commit().unwrap();
                Store::Redb(db)
            }
            "fjall" => {
                let db = fjall::Database::builder(path)
                    .cache_size(FJALL_CACHE)
                    .open()
                    .expect("fjall open");
                let ks = db
                    .keyspace("chunks", || {
                        fjall::KeyspaceCreateOptions::default().max_memtable_size(FJALL_MEMTABLE)
                    })
                    .unwrap();
                Store::Fjall(db, ks)
            }
            _ => panic!("engine is redb or fjall"),
        }
    }

    /// One commit: `puts` then `dels`, fsynced (redb: Durability::Immediate, the
    /// default; fjall: the batch's journal write persisted with SyncAll).
    fn commit(&self, puts: &[(&str, u64, &[u8])], dels: &[(&str, u64)]) {
        match self {
            Store::Redb(db) => {
                let tx = db.begin_write().unwrap();
                {
                    let mut t = tx.open_table(CHUNKS).unwrap();
                    for (c, id, v) in puts {
                        t.insert((*c, *id), *v).unwrap();
                    }
                    for (c, id) in dels {
                        t.remove((*c, *id)).unwrap();
                    }
                }
                tx.commit().unwrap();
            }
            Store::Fjall(db, ks) => {
                let mut b = db
                    .batch()
                    .durability(Some(fjall::PersistMode::SyncAll));
                for (c, id, v) in puts {
                    b.insert(ks, fjall_key(c, *id), *v);
                }
                for (c, id) in dels {
                    b.remove(ks, fjall_key(c, *id));
                }
                b.commit().unwrap();
            }
        }
    }

    /// Waits (at most 60 s) until fjall has no flush or compaction running or queued,
    /// so that the CPU time of the work a run left behind is counted. No-op for redb.
    fn drain(&self) {
        if let Store::Fjall(db, _) = self {
            let t = Instant::now();
            // A flush or compaction may be scheduled just after the previous one ends:
            // require several idle polls in a row.
            let mut idle = 0;
            while idle < 20 && t.elapsed() < Duration::from_secs(60) {
                if db.outstanding_flushes() == 0 && db.active_compactions() == 0 {
                    idle += 1;
                } else {
                    idle = 0;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Scans one client's records in key order; stops after `limit` messages.
    /// Returns (records, messages, value bytes).
    fn scan(&self, client: &str, per_record: usize, limit: u64) -> (u64, u64, u64) {
        let (mut recs, mut msgs, mut bytes) = (0u64, 0u64, 0u64);
        match self {
            Store::Redb(db) => {
                let tx = db.begin_read().unwrap();
                let t = tx.open_table(CHUNKS).unwrap();
                for e in t.range((client, 0)..=(client, u64::MAX)).unwrap() {
                    let (_, v) = e.unwrap();
                    recs += 1;
                    msgs += per_record as u64;
                    bytes += v.value().len() as u64;
                    if msgs >= limit {
                        break;
                    }
                }
            }
            Store::Fjall(_, ks) => {
                let mut prefix = client.as_bytes().to_vec();
                prefix.push(0);
                for g in ks.prefix(&prefix) {
                    let (_, v) = g.into_inner().unwrap();
                    recs += 1;
                    msgs += per_record as u64;
                    bytes += v.len() as u64;
                    if msgs >= limit {
                        break;
                    }
                }
            }
        }
        (recs, msgs, bytes)
    }
}

// ---------------------------------------------------------------------------------
// Workload 1: group commit of queued messages

struct Args(Vec<String>);
impl Args {
    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        let flag = format!("--{name}");
        self.0
            .iter()
            .position(|a| *a == flag)
            .and_then(|i| self.0.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
    fn engine(&self) -> String {
        self.get("engine", String::new())
    }
}

fn temp_path(dir: &Path, engine: &str) -> PathBuf {
    if engine == "redb" {
        dir.join("store.redb")
    } else {
        dir.join("store.fjall")
    }
}

/// Each batch writes, for each of `sessions` sessions, `records` records of
/// `per_record` messages (a chunk when `per_record` > 1), deletes the records written
/// two batches earlier (the messages acknowledged since), and commits with fsync.
/// Runs `batches` batches or `max_secs` seconds, whichever ends first.
fn group(args: &Args, dir: &Path) {
    let engine = args.engine();
    let sessions: usize = args.get("sessions", 1);
    let per_record: usize = args.get("per-record", 50);
    let records: usize = args.get("records", 1);
    let batches: u64 = args.get("batches", 1000);
    let max_secs: f64 = args.get("max-secs", 20.0);

    let msgs = Messages::new();
    let clients: Vec<String> = (0..sessions).map(client_id).collect();
    let path = temp_path(dir, &engine);
    let store = Store::open(&engine, &path);

    let per_batch = (records * per_record) as u64;
    let mut values: Vec<Vec<u8>> = vec![Vec::new(); sessions * records];
    let mut lat = Vec::new();
    let mut max_threads = threads();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut last_sample = t0;
    let mut done = 0u64;
    while done < batches && t0.elapsed().as_secs_f64() < max_secs {
        let b = done;
        let bt = Instant::now();
        for (s, _) in clients.iter().enumerate() {
            for r in 0..records {
                let first = b * per_batch + (r * per_record) as u64 + 1;
                msgs.chunk(first + s as u64, per_record, &mut values[s * records + r]);
            }
        }
        let mut puts = Vec::with_capacity(sessions * records);
        let mut dels = Vec::new();
        for (s, c) in clients.iter().enumerate() {
            for r in 0..records {
                let first = b * per_batch + (r * per_record) as u64 + 1;
                puts.push((c.as_str(), first, values[s * records + r].as_slice()));
                if b >= 2 {
                    dels.push((c.as_str(), (b - 2) * per_batch + (r * per_record) as u64 + 1));
                }
            }
        }
        store.commit(&puts, &dels);
        lat.push(bt.elapsed().as_secs_f64() * 1e3);
        done += 1;
        if last_sample.elapsed() > Duration::from_millis(100) {
            max_threads = max_threads.max(threads());
            last_sample = Instant::now();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    max_threads = max_threads.max(threads());
    // The background work the run left (fjall's flushes and compactions) counts too.
    let td = Instant::now();
    store.drain();
    let drain_s = td.elapsed().as_secs_f64();
    let cpu_drained = cpu_seconds() - cpu0;
    let (live_apparent, live_alloc) = disk_usage(&path);
    drop(store);
    let (apparent, alloc) = disk_usage(&path);
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let messages = done * per_batch * sessions as u64;
    println!(
        "RESULT kind=group engine={engine} sessions={sessions} per_record={per_record} \
         records={records} batches={done} secs={secs:.2} batches_per_s={:.1} \
         msgs_per_s={:.0} cpu_s={cpu:.2} cpu_s_per_M_msgs={:.2} drain_s={drain_s:.2} \
         cpu_drained_s={cpu_drained:.2} cpu_drained_per_M_msgs={:.2} p50_ms={:.2} p99_ms={:.2} \
         disk_open_bytes={live_apparent} disk_open_alloc={live_alloc} \
         disk_closed_bytes={apparent} disk_closed_alloc={alloc} max_threads={max_threads} \
         vmhwm_kib={}",
        done as f64 / secs,
        messages as f64 / secs,
        cpu / (messages as f64 / 1e6),
        cpu_drained / (messages as f64 / 1e6),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        status_kib("VmHWM:"),
    );
}

// ---------------------------------------------------------------------------------
// Workloads 2 and 3: a backlog of one session, scanned, then reopened

/// Appends `total` messages for one session in commits of `batch` messages (fsync
/// each), as records of `per_record` messages (256 is the broker's chunk limit: a
/// commit of 1,000 messages writes chunks of 256, 256, 256 and 232; 1 is one record
/// per message). Then scans them back in key order, drops the store, reopens it and
/// reads the first 1,000 messages.
fn backlog(args: &Args, dir: &Path) {
    let engine = args.engine();
    let total: u64 = args.get("total", 1_000_000);
    let batch: u64 = args.get("batch", 1000);
    let per_record: u64 = args.get("per-record", 256);

    let msgs = Messages::new();
    let client = client_id(0);
    let path = temp_path(dir, &engine);
    let store = Store::open(&engine, &path);
    let mut max_threads = threads();

    // Write.
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut next = 1u64;
    let mut values: Vec<Vec<u8>> = Vec::new();
    let mut records = 0u64;
    while next <= total {
        let end = (next + batch).min(total + 1);
        values.clear();
        let mut ids = Vec::new();
        let mut id = next;
        while id < end {
            let n = per_record.min(end - id);
            let mut v = Vec::new();
            msgs.chunk(id, n as usize, &mut v);
            values.push(v);
            ids.push(id);
            id += n;
        }
        records += ids.len() as u64;
        let puts: Vec<(&str, u64, &[u8])> = ids
            .iter()
            .zip(&values)
            .map(|(id, v)| (client.as_str(), *id, v.as_slice()))
            .collect();
        store.commit(&puts, &[]);
        next = end;
        if next % 100_000 < batch {
            max_threads = max_threads.max(threads());
        }
    }
    let write_secs = t0.elapsed().as_secs_f64();
    let write_cpu = cpu_seconds() - cpu0;
    let td = Instant::now();
    store.drain();
    let drain_s = td.elapsed().as_secs_f64();
    let write_cpu_drained = cpu_seconds() - cpu0;
    let (size_written, _) = disk_usage(&path);
    let hwm_write = status_kib("VmHWM:");

    // Scan. (A full-chunk record counts as `per_record` messages; the last one of a
    // commit holds fewer, so count messages by the records' sizes instead: the scan
    // reports records and bytes, and messages = total when all records were seen.)
    let t1 = Instant::now();
    let (recs, _, bytes) = store.scan(&client, 1, u64::MAX);
    let scan_secs = t1.elapsed().as_secs_f64();
    assert_eq!(recs, records, "scan saw every record");
    max_threads = max_threads.max(threads());
    let hwm_scan = status_kib("VmHWM:");

    // Restart: drop, reopen, read the first 1,000 messages.
    let td = Instant::now();
    drop(store);
    let drop_secs = td.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let store = Store::open(&engine, &path);
    let open_secs = t2.elapsed().as_secs_f64();
    let t3 = Instant::now();
    let (first_recs, first_msgs, _) = store.scan(&client, per_record as usize, 1000);
    let first_secs = t3.elapsed().as_secs_f64();
    max_threads = max_threads.max(threads());
    drop(store);
    let (size_final, alloc_final) = disk_usage(&path);

    println!(
        "RESULT kind=backlog engine={engine} total={total} batch={batch} \
         per_record={per_record} records={records} write_s={write_secs:.2} \
         write_msgs_per_s={:.0} write_cpu_s={write_cpu:.2} drain_s={drain_s:.2} \
         write_cpu_drained_s={write_cpu_drained:.2} scan_s={scan_secs:.3} \
         scan_msgs_per_s={:.0} scan_bytes={bytes} size_after_write={size_written} \
         disk_closed_bytes={size_final} disk_closed_alloc={alloc_final} \
         vmhwm_write_kib={hwm_write} vmhwm_scan_kib={hwm_scan} drop_s={drop_secs:.3} \
         reopen_ms={:.1} first_read_ms={:.2} first_records={first_recs} \
         first_msgs={first_msgs} max_threads={max_threads}",
        total as f64 / write_secs,
        total as f64 / scan_secs,
        open_secs * 1e3,
        first_secs * 1e3,
    );
}

// ---------------------------------------------------------------------------------
// The disk's own fsync latency, for context: 200 appends of 4 KiB, each fdatasynced.

fn fsync_probe(dir: &Path) -> String {
    use std::io::Write;
    let path = dir.join("probe");
    let mut f = fs::File::create(&path).unwrap();
    let buf = [7u8; 4096];
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(f);
    fs::remove_file(&path).ok();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "fdatasync of a 4 KiB append: p10 {:.2} ms, p50 {:.2} ms, p90 {:.2} ms",
        percentile(&lat, 0.1),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9)
    )
}

// ---------------------------------------------------------------------------------
// Driver

fn run_child(args: &[String]) -> Option<String> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe).args(args).output().expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("run {:?} failed: {}", args, String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let line = stdout.lines().find(|l| l.starts_with("RESULT"))?.to_string();
    eprintln!("{line}");
    Some(line)
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let k = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&k))
        .unwrap_or("?")
}

fn mib(s: &str) -> String {
    s.parse::<f64>()
        .map(|b| format!("{:.1}", b / 1048576.0))
        .unwrap_or_else(|_| "?".into())
}

fn all(args: &Args) {
    let reps: usize = args.get("reps", 3);
    let only: String = args.get("only", String::new());
    let engines = ["redb", "fjall"];
    let sv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    println!("# store-bench");
    println!("redb 2.6.4 (default-features = false, cache 16 MiB); fjall 3.1.13 (default features: lz4; cache 16 MiB, memtable 8 MiB, other settings default)");
    let up = Command::new("uptime").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!("start: {}", up.unwrap_or_default());
    let probe_dir = tempdir_in(Path::new("/tmp"));
    println!("disk: {}", fsync_probe(&probe_dir));

    if only.is_empty() || only == "group" {
        // (sessions, per_record, records per session per batch, batches)
        let configs: [(usize, usize, usize, u64); 6] = [
            (1, 50, 1, 1000),
            (1, 1, 1, 1000),
            (1, 1, 50, 1000),
            (1000, 50, 1, 100),
            (1000, 1, 1, 300),
            (1000, 1, 50, 30),
        ];
        println!("\n## 1. Group commit (one commit per batch, fsync)\n");
        println!("| engine | S | records × msgs per session per batch | run | batches | batches/s | msgs/s | p50 / p99 commit ms | CPU s per M msgs (loop / incl. background drain) | disk at end (MiB, apparent / allocated) | threads |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        // Repetitions alternate the engines (redb, fjall, redb, ...) so that a slow
        // spell of the shared disk or CPUs does not land on one engine's runs only.
        for (s, n, r, b) in configs {
            for rep in 1..=reps {
                for engine in engines {
                    let Some(l) = run_child(&sv(&[
                        "group", "--engine", engine, "--sessions", &s.to_string(),
                        "--per-record", &n.to_string(), "--records", &r.to_string(),
                        "--batches", &b.to_string(),
                    ])) else { continue };
                    println!(
                        "| {engine} | {s} | {r} × {n} | {rep} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} |",
                        field(&l, "batches"), field(&l, "batches_per_s"), field(&l, "msgs_per_s"),
                        field(&l, "p50_ms"), field(&l, "p99_ms"), field(&l, "cpu_s_per_M_msgs"),
                        field(&l, "cpu_drained_per_M_msgs"),
                        mib(field(&l, "disk_closed_bytes")), mib(field(&l, "disk_closed_alloc")),
                        field(&l, "max_threads"),
                    );
                }
            }
        }
    }
    if only.is_empty() || only == "backlog" {
        println!("\n## 2–3. Backlog of 1,000,000 messages, one session, commits of 1,000 (fsync)\n");
        println!("| engine | msgs per record | run | write msgs/s | write CPU s (loop / incl. drain) | scan msgs/s | size (MiB, apparent / allocated) | VmHWM MiB (write / scan) | reopen ms | first 1,000 ms | threads |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for per in [256u64, 1] {
            for rep in 1..=reps {
                for engine in engines {
                    let Some(l) = run_child(&sv(&[
                        "backlog", "--engine", engine, "--per-record", &per.to_string(),
                    ])) else { continue };
                    let kib = |k: &str| {
                        field(&l, k).parse::<f64>().map(|v| format!("{:.0}", v / 1024.0)).unwrap_or_default()
                    };
                    println!(
                        "| {engine} | {per} | {rep} | {} | {} / {} | {} | {} / {} | {} / {} | {} | {} | {} |",
                        field(&l, "write_msgs_per_s"), field(&l, "write_cpu_s"),
                        field(&l, "write_cpu_drained_s"),
                        field(&l, "scan_msgs_per_s"), mib(field(&l, "disk_closed_bytes")),
                        mib(field(&l, "disk_closed_alloc")), kib("vmhwm_write_kib"),
                        kib("vmhwm_scan_kib"), field(&l, "reopen_ms"), field(&l, "first_read_ms"),
                        field(&l, "max_threads"),
                    );
                }
            }
        }
    }
    let up = Command::new("uptime").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!("\ndisk: {}", fsync_probe(&probe_dir));
    fs::remove_dir_all(&probe_dir).ok();
    println!("end: {}", up.unwrap_or_default());
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cmd = argv.first().cloned().unwrap_or_else(|| "all".into());
    let args = Args(argv);
    match cmd.as_str() {
        "all" => all(&args),
        "group" | "backlog" => {
            let base: String = args.get("dir", "/tmp".to_string());
            let dir = tempdir_in(Path::new(&base));
            if cmd == "group" {
                group(&args, &dir);
            } else {
                backlog(&args, &dir);
            }
            fs::remove_dir_all(&dir).ok();
        }
        _ => {
            eprintln!("usage: store-bench [all [--reps N] [--only group|backlog]] | group ... | backlog ...");
            std::process::exit(2);
        }
    }
}

fn tempdir_in(base: &Path) -> PathBuf {
    let d = base.join(format!("store-bench-{}", std::process::id()));
    fs::create_dir_all(&d).unwrap();
    d
}
