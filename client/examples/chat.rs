//! Runnable example: connect, send one message, print what arrives.
//!
//! ```text
//! ringgate serve                     # terminal 1 (writes ringgate-data/dev-cert.pem)
//! cargo run -p ringgate-client --example chat -- 127.0.0.1:7443 ringgate-data/dev-cert.pem \
//!     "$(ringgate token --user alice)" bob "hello bob"
//! ```

use ringgate_client::{Client, ClientConfig, Target, TokenSource, Trust};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, ca, token, to, text] = args.as_slice() else {
        eprintln!("usage: chat HOST:PORT CA_PEM TOKEN TO_USER TEXT");
        std::process::exit(2);
    };
    let cfg = ClientConfig::new("example", TokenSource::Static(token.clone()))
        .trust(Trust::CaFile(ca.into()))
        .endpoint(endpoint)?
        .on_event(|e| eprintln!("{e:?}"));
    let mut client = Client::connect(cfg).await?;
    let ack = client.send(Target::User(to.clone()), text.as_bytes()).await?;
    println!("SENDACK status {} msg_id {}", ack.status, ack.msg_id);
    // Print whatever is waiting in our own inbox for a few seconds.
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(3));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            m = client.recv() => match m {
                Some(m) => println!("{}\t{}\t{}", m.seq, m.from, String::from_utf8_lossy(&m.payload)),
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    client.close().await;
    Ok(())
}
