//! Stores for tests, on each backend: a temporary directory, and a fresh prefix of a bucket
//! on the S3 server the environment names (`.ci/run` starts `moto_server` on loopback and
//! exports `AWS_ENDPOINT_URL` with test credentials). Without one a test that asks for it
//! is skipped with a message, except under `CI=true`, where it fails: a missing service
//! never passes silently.

use std::io::{Read, Write};

/// The bucket the tests use; made on first use.
pub const BUCKET: &str = "pipe-test";

/// A store URL no other test uses, on the S3 server of the environment; None (skipped)
/// when there is none outside CI.
pub fn s3_url(test: &str) -> Option<String> {
    let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: no S3 server (AWS_ENDPOINT_URL is unset); .ci/run starts moto_server and exports it, and under CI=true an S3 test fails rather than skip");
        }
        eprintln!("skipping the S3 half of {test}: set AWS_ENDPOINT_URL (and test credentials) to an S3 server such as `moto_server -H 127.0.0.1 -p 5077`");
        return None;
    };
    make_bucket(&endpoint);
    Some(format!("s3://{BUCKET}/{test}-{}", super::unique_id()))
}

/// Creates the test bucket with one plain HTTP PUT (moto checks no signature); an
/// existing bucket is fine.
fn make_bucket(endpoint: &str) {
    static MADE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let mut conn = std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("the S3 server {endpoint} (AWS_ENDPOINT_URL) cannot be reached: {e}"));
        write!(conn, "PUT /{BUCKET} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").expect("request sent");
        let mut reply = String::new();
        let _ = conn.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200") || reply.contains("BucketAlreadyOwnedByYou"), "creating bucket {BUCKET} on {endpoint}: {reply}");
    });
}
