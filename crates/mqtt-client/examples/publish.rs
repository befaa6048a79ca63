//! Publishes one message at each QoS and prints the broker's answers.
//!
//! `cargo run -p mqtt-client --example publish -- mqtt://localhost:1883 some/topic`
#![allow(clippy::print_stdout)]

use mqtt_client::{ConnectOptions, ProtocolVersion, QoS};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "mqtt://localhost:1883".into());
    let topic = args.next().unwrap_or_else(|| "mqtt-rs/example".into());
    let options = ConnectOptions::from_url(&url)?.version(ProtocolVersion::V5);
    let (client, _connection) = mqtt_client::connect(options).await?;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let code = client
            .publish(&topic, format!("hello at {qos}"), qos, false)
            .await?;
        println!("{qos}: {code}");
    }
    client.disconnect().await?;
    Ok(())
}
