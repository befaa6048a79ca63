//! The latency scenario: one publisher at a fixed rate, one subscriber, the send time in
//! every payload. Plain threads and blocking sockets: an async runtime's timer (1 ms
//! granularity) would send in bursts and its scheduling would add to what is measured.
//!
//! The connections are opened and set up (CONNECT, SUBSCRIBE) like every other, by
//! [`Conn::connect`]; then plain TCP becomes a blocking `std` socket again. TLS and
//! WebSocket streams stay async, driven from the threads through a small runtime.

use std::{
    io::{self, Read, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use mqtt_client::BoxIo;
use mqtt_codec::{ByteStr, Decoder, Packet, PacketId, PubAck, QoS};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf},
    runtime::Handle,
};

use crate::{
    target::Dialer,
    wire::{self, Conn, Stamp, Stream},
};

/// How long a read may wait before the run is deemed stuck.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Latency figures of one run.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
    pub(crate) elapsed: Duration,
    pub(crate) faults: Vec<String>,
}

/// The reading side of a connection, used from a plain thread.
enum Reader {
    Std(std::net::TcpStream),
    Async(Handle, ReadHalf<BoxIo>),
}

/// The writing side of a connection, used from a plain thread.
enum Writer {
    Std(std::net::TcpStream),
    Async(Handle, WriteHalf<BoxIo>),
}

/// Splits a connected stream into sides for blocking use: a plain TCP socket becomes
/// blocking again (two handles on one socket); a layered stream is split and driven
/// on `handle`'s runtime.
fn split(stream: Stream, handle: &Handle) -> Result<(Reader, Writer), String> {
    match stream {
        Stream::Tcp(tcp) => {
            let err = |e: io::Error| format!("cannot make the socket blocking: {e}");
            let std = {
                let _entered = handle.enter();
                tcp.into_std().map_err(err)?
            };
            std.set_nonblocking(false).map_err(err)?;
            std.set_read_timeout(Some(READ_TIMEOUT)).map_err(err)?;
            let reader = std.try_clone().map_err(err)?;
            Ok((Reader::Std(reader), Writer::Std(std)))
        }
        Stream::Layered(io) => {
            let (r, w) = tokio::io::split(io);
            Ok((
                Reader::Async(handle.clone(), r),
                Writer::Async(handle.clone(), w),
            ))
        }
    }
}

impl Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Std(s) => s.read(buf),
            Self::Async(handle, r) => handle.block_on(async {
                tokio::time::timeout(READ_TIMEOUT, r.read(buf))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
            }),
        }
    }
}

impl Writer {
    fn write_all(&mut self, data: &[u8]) -> Result<(), String> {
        match self {
            Self::Std(s) => s.write_all(data),
            Self::Async(handle, w) => handle.block_on(async {
                w.write_all(data).await?;
                w.flush().await
            }),
        }
        .map_err(|e| format!("write: {e}"))
    }

    fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        wire::encode(packet, wire::VERSION, &mut out);
        self.write_all(&out)
    }
}

/// Packets in from a blocking reader.
struct Incoming {
    reader: Reader,
    rbuf: BytesMut,
    decoder: Decoder,
}

impl Incoming {
    fn next(&mut self) -> Result<Packet, String> {
        loop {
            if let Some(p) = self
                .decoder
                .decode(&mut self.rbuf)
                .map_err(|e| e.to_string())?
            {
                return Ok(p);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.reader.read(&mut chunk) {
                Ok(0) => return Err("the broker closed the connection".to_owned()),
                Ok(n) => self
                    .rbuf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// Connects (and subscribes to `filter`, if given) on `rt`, then hands the connection
/// over for blocking use.
fn connect(
    rt: &tokio::runtime::Runtime,
    dialer: &Dialer,
    id: &str,
    filter: Option<(&str, QoS)>,
) -> Result<(Incoming, Writer), String> {
    let conn = rt
        .block_on(async {
            let mut conn = Conn::connect(
                dialer,
                None,
                id,
                60,
                wire::READ_BUFFER,
                wire::VERSION,
                false,
            )
            .await?;
            if let Some((filter, qos)) = filter {
                conn.subscribe(filter, qos).await?;
            }
            Ok::<_, wire::WireError>(conn)
        })
        .map_err(|e| format!("{id}: {e}"))?;
    let (stream, rbuf, decoder) = conn.into_parts();
    let (reader, writer) = split(stream, rt.handle())?;
    Ok((
        Incoming {
            reader,
            rbuf,
            decoder,
        },
        writer,
    ))
}

/// When the messages of a latency run go out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    /// Messages per second.
    pub(crate) rate: u32,
    /// The messages due within one tick go out together at its end; zero: each at its
    /// own time.
    pub(crate) tick: Duration,
}

/// Publishes `count` messages as `pacing` says and measures each one's delay.
pub(crate) fn run(
    dialer: &Dialer,
    qos: QoS,
    size: usize,
    Pacing { rate, tick }: Pacing,
    count: u32,
    measure_start: impl FnOnce(),
    measure_end: impl FnOnce(),
) -> Result<Latencies, String> {
    // Drives the TLS and WebSocket streams; idle for plain TCP.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let pid = std::process::id();
    let topic = format!("bench/latency/{pid}");
    let (mut sub, mut sub_out) = connect(
        &rt,
        dialer,
        &format!("bench-lat-sub-{pid}"),
        Some((&topic, qos)),
    )?;
    let (mut acks, mut publ) = connect(&rt, dialer, &format!("bench-lat-pub-{pid}"), None)?;
    let epoch = Instant::now();
    let done = Arc::new(AtomicBool::new(false));

    // The subscriber: record every delay, acknowledge QoS 1.
    let sub_done = done.clone();
    let subscriber = thread::spawn(move || -> Result<Vec<u64>, String> {
        let mut delays = Vec::with_capacity(count as usize);
        let mut next_seq = 0u32;
        while delays.len() < count as usize {
            let packet = match sub.next() {
                Ok(p) => p,
                Err(_) if sub_done.load(Ordering::Acquire) => break,
                Err(e) => return Err(e),
            };
            if let Packet::Publish(p) = packet {
                let now = epoch.elapsed().as_nanos() as u64;
                let stamp = Stamp::read(&p.payload).ok_or("a payload without a stamp")?;
                if stamp.seq != next_seq {
                    return Err(format!(
                        "message {} arrived when {next_seq} was due",
                        stamp.seq
                    ));
                }
                next_seq += 1;
                delays.push(now.saturating_sub(stamp.sent_ns));
                if let Some(pid) = p.packet_id() {
                    sub_out.send(&Packet::PubAck(PubAck::new(pid)))?;
                }
            }
        }
        Ok(delays)
    });

    // The publisher's acknowledgements, read on their own thread.
    let ack_done = done.clone();
    let ack_reader = thread::spawn(move || {
        let mut acked = 0u32;
        while acked < count && qos != QoS::AtMostOnce {
            match acks.next() {
                Ok(Packet::PubAck(_)) => acked += 1,
                Ok(_) => {}
                Err(_) if ack_done.load(Ordering::Acquire) => break,
                Err(e) => return Err(e),
            }
        }
        Ok::<u32, String>(acked)
    });

    measure_start();
    let began = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut out = BytesMut::with_capacity(64 + size);
    let mut pid = 1u16;
    for seq in 0..count {
        let mut due = began + period * seq;
        if !tick.is_zero() {
            // Due at the end of its tick: the tick's messages go out back to back.
            let ticks = due
                .duration_since(began)
                .as_nanos()
                .div_ceil(tick.as_nanos());
            due = began + tick * u32::try_from(ticks).unwrap_or(u32::MAX);
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        out.clear();
        let stamp = Stamp {
            publisher: 0,
            seq,
            sent_ns: epoch.elapsed().as_nanos() as u64,
        };
        let p = PacketId::new(pid).unwrap_or(PacketId::MIN);
        let mut publish = mqtt_codec::Publish::new(
            ByteStr::try_from(topic.as_str()).map_err(|e| e.to_string())?,
            {
                let mut payload = BytesMut::with_capacity(size.max(Stamp::LEN));
                stamp.write(size, &mut payload);
                payload.freeze()
            },
        );
        publish.qos_pid = mqtt_codec::QosPid::new(qos, p);
        wire::encode(&Packet::Publish(publish), wire::VERSION, &mut out);
        publ.write_all(&out)?;
        pid = pid.checked_add(1).unwrap_or(1);
    }
    let delays = subscriber
        .join()
        .map_err(|_| "the subscriber thread panicked".to_owned())??;
    let elapsed = began.elapsed();
    measure_end();
    done.store(true, Ordering::Release);
    let _ = ack_reader.join();

    let mut sorted = delays.clone();
    sorted.sort_unstable();
    let pct = |q: f64| -> f64 {
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    let mut faults = Vec::new();
    if sorted.len() < count as usize {
        faults.push(format!(
            "{} of {count} messages never arrived",
            count as usize - sorted.len()
        ));
    }
    Ok(Latencies {
        sent: u64::from(count),
        received: sorted.len() as u64,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: sorted.last().copied().unwrap_or(0) as f64 / 1000.0,
        elapsed,
        faults,
    })
}
