//! `ce-rerank`: send one `Rerank` to a running ce-supervisor over gRPC and
//! print the ranks (the smoke test's client when `grpcurl` is missing).
//!
//! ```text
//! ce-rerank --addr http://127.0.0.1:50051 --query "what is rust" "A language." "A fungus."
//! ```

use anyhow::Context;
use ce_proto::v1::RerankRequest;
use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "Send one Rerank request and print the ranks")]
struct Args {
    /// Server address.
    #[arg(long, env = "CE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The query.
    #[arg(long)]
    query: String,
    /// Only the best N.
    #[arg(long)]
    top_n: Option<u32>,
    /// Raw logits instead of the model's activation.
    #[arg(long)]
    raw: bool,
    /// The documents.
    #[arg(required = true)]
    documents: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut client = CrossEncoderClient::connect(args.addr.clone())
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let reply = client
        .rerank(RerankRequest {
            query: args.query,
            documents: args.documents,
            top_n: args.top_n,
            return_documents: true,
            raw_scores: args.raw,
            ..Default::default()
        })
        .await?
        .into_inner();
    for (rank, r) in reply.ranks.iter().enumerate() {
        println!(
            "{:>3}. [{}] {:>10.6}  {}",
            rank + 1,
            r.index,
            r.score,
            r.document.as_deref().unwrap_or("")
        );
    }
    if let Some(t) = reply.timing {
        println!(
            "tokens {}, tokenize {} µs, queue {} µs, inference {} µs, total {} µs",
            reply.tokens, t.tokenize_us, t.queue_us, t.inference_us, t.total_us
        );
    }
    Ok(())
}
