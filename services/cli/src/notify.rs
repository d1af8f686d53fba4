//! `sysmonstm notify test <channel>`: asks the running notifier to send a
//! test message on one of its channels, with its own configuration and
//! credentials, and prints the channel's answer.

use std::time::Duration;

use async_nats::jetstream;
use clap::Subcommand;
use sysmonstm_schemas::{MachineId, subjects};

use crate::InvalidInput;

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test message on a channel of the running notifier.
    Test {
        channel: String,
        /// Seconds to wait for the channel's answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

pub async fn run(js: &jetstream::Context, cmd: NotifyCommand) -> anyhow::Result<()> {
    let NotifyCommand::Test { channel, timeout } = cmd;
    let id = MachineId::parse(&channel)
        .map_err(|e| InvalidInput(format!("channel {channel:?}: {e}")))?;
    let wait = Duration::from_secs(timeout.clamp(1, 600));
    let client = js.client().clone();
    let req = async_nats::Request::new()
        .payload(bytes::Bytes::new())
        .timeout(Some(wait));
    let answer = match client.send_request(subjects::notify_test(&id), req).await {
        Ok(m) => m,
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            anyhow::bail!("no notifier is running (nobody answers notify tests)")
        }
        Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
            anyhow::bail!("the notifier did not answer within {timeout} s")
        }
        Err(e) => anyhow::bail!("the notifier did not answer: {e}"),
    };
    let v: serde_json::Value = serde_json::from_slice(&answer.payload)
        .map_err(|e| anyhow::anyhow!("the notifier's answer is not JSON: {e}"))?;
    if v["ok"] == true {
        println!("test message sent on {channel}: the channel accepted it");
        Ok(())
    } else {
        anyhow::bail!(
            "channel {channel}: {}",
            v["error"].as_str().unwrap_or("failed")
        )
    }
}
