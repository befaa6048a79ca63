//! The `mqtt-broker` binary. Not built yet: it says so and exits with status 2.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "mqtt-broker: not built yet. The broker is tracked in issue 5; today the workspace \
         provides the mqtt-codec crate only."
    );
    ExitCode::from(2)
}
