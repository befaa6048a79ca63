//! Subscribes to a filter and prints messages and connection events until Ctrl-C;
//! reconnects by itself when the broker goes away.
//!
//! `cargo run -p mqtt-client --example subscribe -- mqtt://localhost:1883 'sensors/#'`
#![allow(clippy::print_stdout)]

use mqtt_client::{ConnectOptions, Event, QoS};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "mqtt://localhost:1883".into());
    let filter = args.next().unwrap_or_else(|| "#".into());
    // A session that survives reconnection, so nothing is missed while away.
    let options = ConnectOptions::from_url(&url)?
        .client_id("mqtt-rs-example-sub")
        .clean_start(false)
        .session_expiry(300);
    let (client, mut connection) = mqtt_client::connect(options).await?;
    let granted = client.subscribe(&filter, QoS::ExactlyOnce).await?;
    println!("subscribed to {filter} with {granted}");
    while let Some(event) = connection.next_event().await {
        match event {
            Event::Message(m, _) => {
                println!("{} {}", m.topic, String::from_utf8_lossy(&m.payload));
            }
            other => println!("-- {other:?}"),
        }
    }
    Ok(())
}
