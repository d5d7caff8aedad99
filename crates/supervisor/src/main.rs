//! `ce-supervisor`: serve a cross-encoder reranker over gRPC and HTTP with
//! tokenizer and model worker processes. See `ce-supervisor --help`.

use clap::Parser;
use supervisor::config::Cli;
use supervisor::server::Listeners;

fn main() -> anyhow::Result<()> {
    supervisor::logging::init();
    let settings = Cli::parse().settings()?;
    // Refused by name here, before a worker is spawned with it.
    let ipc = ce_common::ipc::Backend::from_env()?;
    tracing::info!(%ipc, "IPC backend");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            let listeners = Listeners::bind(&settings).await?;
            supervisor::server::run(settings, listeners).await
        })
}
