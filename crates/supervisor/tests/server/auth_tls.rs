//! The API key and TLS on both ports.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_scoring_but_not_health_or_metrics() {
    let server = Server::start(&["--tokenizers", "0", "--api-key", "s3cret"]);
    let mut client = server.client().await;
    let rerank = || RerankRequest {
        query: "q".into(),
        documents: vec!["d".into()],
        ..Default::default()
    };
    assert_eq!(
        client.rerank(rerank()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut wrong = tonic::Request::new(rerank());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        client.rerank(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(rerank());
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert!(client.rerank(right).await.is_ok());
    let port = server.http_port;
    assert_eq!(
        http(
            port,
            "POST",
            "/rerank",
            Some(r#"{"query":"q","texts":["a"]}"#)
        )
        .unwrap()
        .0,
        401
    );
    assert_eq!(http(port, "GET", "/info", None).unwrap().0, 401);
    assert_eq!(http(port, "GET", "/health", None).unwrap().0, 200);
    assert_eq!(http(port, "GET", "/metrics", None).unwrap().0, 200);
    let authorized = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = r#"{"query":"q","texts":["a"]}"#;
        write!(
            s,
            "POST /rerank HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer s3cret\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    };
    assert!(authorized.starts_with("HTTP/1.1 200"), "{authorized}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_grpc_and_http_and_refuses_plain_text() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = Server::spawn(
        &[
            "--tokenizers",
            "0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &support::bin_dir(),
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    // HTTPS: a rustls client that trusts only our certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let https = |method: &'static str, path: &'static str, body: &'static str| {
        let (connector, port) = (connector.clone(), server.http_port);
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(format!(
                "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ).as_bytes()).await?;
            let mut response = String::new();
            let _ = tls.read_to_string(&mut response).await;
            Ok::<_, std::io::Error>(response)
        }
    };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !https("GET", "/health", "")
        .await
        .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        assert!(std::time::Instant::now() < until, "not ready over HTTPS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = https("POST", "/rerank", r#"{"query":"q","texts":["a","b"]}"#)
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"index\""), "{reply}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = http(server.http_port, "GET", "/health", None);
    assert!(!matches!(plain, Ok((200, _))), "{plain:?}");
    // gRPC over TLS.
    let endpoint =
        tonic::transport::Channel::from_shared(format!("https://localhost:{}", server.grpc_port))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(
                        certified.cert.pem(),
                    ))
                    .domain_name("localhost"),
            )
            .unwrap();
    let channel = endpoint.connect().await.expect("TLS channel");
    let mut client = CrossEncoderClient::new(channel);
    let reply = client
        .rerank(support::two_document_rerank())
        .await
        .expect("rerank over TLS");
    assert_eq!(reply.into_inner().ranks.len(), 2);
    // A plain-text gRPC client is refused.
    let plain = CrossEncoderClient::connect(format!("http://127.0.0.1:{}", server.grpc_port)).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c
            .rerank(RerankRequest {
                query: "q".into(),
                documents: vec!["a".into()],
                ..Default::default()
            })
            .await
            .is_err(),
    };
    assert!(refused, "plain-text gRPC answered on the TLS port");
}
