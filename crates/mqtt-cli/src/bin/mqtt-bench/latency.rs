//! The latency scenario: one publisher at a fixed rate, one subscriber, the send time in
//! every payload. Plain threads and blocking sockets: an async runtime's timer (1 ms
//! granularity) would send in bursts and its scheduling would add to what is measured.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use mqtt_codec::{ByteStr, Connect, Decoder, Packet, PacketId, PubAck, QoS, ReasonCode, Subscribe};

use crate::wire::{self, Stamp};

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

/// A blocking MQTT connection.
struct Blocking {
    stream: TcpStream,
    rbuf: BytesMut,
    decoder: Decoder,
}

impl Blocking {
    fn connect(broker: SocketAddr, id: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(broker).map_err(|e| format!("connect {broker}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut decoder = Decoder::new();
        decoder.set_version(wire::VERSION);
        let mut conn = Self {
            stream,
            rbuf: BytesMut::with_capacity(wire::READ_BUFFER),
            decoder,
        };
        let id = ByteStr::try_from(id).map_err(|e| e.to_string())?;
        conn.send(&Packet::from(Connect::new(wire::VERSION, id)))?;
        match conn.next()? {
            Packet::ConnAck(a) if a.reason_code == ReasonCode::SUCCESS => Ok(conn),
            other => Err(format!("connection refused: {other:?}")),
        }
    }

    fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        wire::encode(packet, wire::VERSION, &mut out);
        self.stream
            .write_all(&out)
            .map_err(|e| format!("write: {e}"))
    }

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
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("the broker closed the connection".to_owned()),
                Ok(n) => self
                    .rbuf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// Publishes `count` messages at `rate` per second and measures each one's delay.
pub(crate) fn run(
    broker: SocketAddr,
    qos: QoS,
    size: usize,
    rate: u32,
    count: u32,
    measure_start: impl FnOnce(),
    measure_end: impl FnOnce(),
) -> Result<Latencies, String> {
    let pid = std::process::id();
    let topic = format!("bench/latency/{pid}");
    let mut sub = Blocking::connect(broker, &format!("bench-lat-sub-{pid}"))?;
    let filter = ByteStr::try_from(topic.as_str()).map_err(|e| e.to_string())?;
    sub.send(&Packet::from(Subscribe::new(PacketId::MIN, filter, qos)))?;
    match sub.next()? {
        Packet::SubAck(_) => {}
        other => return Err(format!("unexpected {other:?} before SUBACK")),
    }
    let mut publ = Blocking::connect(broker, &format!("bench-lat-pub-{pid}"))?;
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
                    sub.send(&Packet::PubAck(PubAck::new(pid)))?;
                }
            }
        }
        Ok(delays)
    });

    // The publisher's acknowledgements, read on their own thread.
    let mut acks = Blocking {
        stream: publ.stream.try_clone().map_err(|e| e.to_string())?,
        rbuf: BytesMut::new(),
        decoder: {
            let mut d = Decoder::new();
            d.set_version(wire::VERSION);
            d
        },
    };
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
        let due = began + period * seq;
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
        publ.stream
            .write_all(&out)
            .map_err(|e| format!("write: {e}"))?;
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
