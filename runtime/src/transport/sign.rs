//! SigV4 signing of the data-channel WebSocket upgrade (docs/protocol.md §4.1 step 2, §9.6).
//!
//! Newer official plugins sign the `GET` upgrade of the StreamUrl with SigV4 (service
//! `ssmmessages`), in headers, unless the URL is already presigned (its query carries
//! `X-Amz-Signature` and friends) — then it is dialed as-is. We do the same, with credentials
//! loaded fresh for every connection so that rotated credentials are used after a resume.
//!
//! The signature covers `host` and `x-amz-date` (and `x-amz-security-token` for temporary
//! credentials) over an empty payload. The WebSocket headers tungstenite needs (`Connection`,
//! `Upgrade`, `Sec-WebSocket-Version`, `Sec-WebSocket-Key`) are present in the returned request
//! but deliberately left out of the signature: the key is random per dial, and the service only
//! requires the signed headers it names in `SignedHeaders`.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{self, HeaderValue, Request};

/// SigV4 signing name of the data-channel endpoint.
pub const SIGNING_SERVICE: &str = "ssmmessages";

/// Query parameters whose presence means the StreamUrl is presigned (the list the official
/// plugin checks).
const PRESIGN_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// Why an upgrade request could not be built. Messages never contain the URL (its query may be a
/// credential) or any key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The StreamUrl is not a valid `ws://` or `wss://` URL with a host.
    #[error("stream URL is not a valid WebSocket URL: {0}")]
    InvalidUrl(&'static str),
    /// The SigV4 signer rejected the request or the parameters.
    #[error("could not SigV4-sign the WebSocket upgrade: {0}")]
    Signing(String),
}

/// Builds the WebSocket upgrade request for `stream_url`, SigV4-signed for service
/// [`SIGNING_SERVICE`] in `region` at `time`, unless the URL is presigned (then it is returned
/// with the standard upgrade headers only).
///
/// The result can be passed straight to `tokio_tungstenite::connect_async` (it already carries
/// `Host`, `Connection`, `Upgrade`, `Sec-WebSocket-Version` and `Sec-WebSocket-Key`). Works for
/// `wss://` (AWS) and `ws://127.0.0.1:PORT/…` (the emulator) alike.
///
/// # Errors
/// [`SignError::InvalidUrl`] for a malformed URL or a scheme other than `ws`/`wss`;
/// [`SignError::Signing`] if signing fails (e.g. an empty region).
pub fn signed_upgrade_request(
    stream_url: &str,
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<Request<()>, SignError> {
    let uri: http::Uri = stream_url
        .parse()
        .map_err(|_| SignError::InvalidUrl("cannot be parsed"))?;
    if !matches!(uri.scheme_str(), Some("ws" | "wss")) {
        return Err(SignError::InvalidUrl("scheme must be ws or wss"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(SignError::InvalidUrl("no host"));
    }
    let presigned = is_presigned(&uri);
    let mut request = uri
        .into_client_request()
        .map_err(|_| SignError::InvalidUrl("rejected by the WebSocket client"))?;
    if presigned {
        return Ok(request);
    }
    if region.is_empty() {
        return Err(SignError::Signing("no region to sign for".to_owned()));
    }

    // Sign exactly the Host value tungstenite will send (authority as written, port included if
    // written), so the canonical request matches what the service sees.
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or(SignError::InvalidUrl("no host"))?
        .to_owned();
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError::Signing(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        "GET",
        stream_url,
        std::iter::once(("host", host.as_str())),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| SignError::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| SignError::Signing(e.to_string()))?
        .into_parts();
    let (headers, _query) = instructions.into_parts();
    for header in headers {
        let mut value = HeaderValue::from_str(header.value())
            .map_err(|_| SignError::Signing(format!("invalid {} header value", header.name())))?;
        // Marks Authorization / the session token so that http's Debug output hides them.
        value.set_sensitive(header.sensitive() || header.name() != "x-amz-date");
        request.headers_mut().insert(header.name(), value);
    }
    Ok(request)
}

/// True when the URL's query already carries SigV4 presign parameters.
pub fn is_presigned_url(stream_url: &str) -> bool {
    stream_url
        .parse::<http::Uri>()
        .is_ok_and(|uri| is_presigned(&uri))
}

fn is_presigned(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|query| {
        query.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            PRESIGN_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
        })
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use sha2::{Digest, Sha256};

    use super::*;

    /// 2024-01-02T03:04:05Z
    fn fixed_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_704_164_645)
    }

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_owned),
            None,
            "test",
        )
    }

    fn header<'a>(req: &'a Request<()>, name: &str) -> Option<&'a str> {
        req.headers().get(name).and_then(|v| v.to_str().ok())
    }

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC-SHA256 per RFC 2104, written out so the test checks aws-sigv4 independently.
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(data)
            .finalize();
        Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize()
            .to_vec()
    }

    /// The SigV4 signature computed by hand from the spec, for a GET with an empty body.
    fn expected_signature(host: &str, path: &str, query: &str, token: Option<&str>) -> String {
        let date = "20240102T030405Z";
        let mut canonical_headers = format!("host:{host}\nx-amz-date:{date}\n");
        let mut signed = "host;x-amz-date".to_owned();
        if let Some(t) = token {
            canonical_headers.push_str(&format!("x-amz-security-token:{t}\n"));
            signed.push_str(";x-amz-security-token");
        }
        let empty_hash = hex::encode(Sha256::digest(b""));
        let creq = format!("GET\n{path}\n{query}\n{canonical_headers}\n{signed}\n{empty_hash}");
        let scope = "20240102/us-east-1/ssmmessages/aws4_request";
        let sts = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            hex::encode(Sha256::digest(creq.as_bytes()))
        );
        let k_date = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20240102");
        let k_region = hmac(&k_date, b"us-east-1");
        let k_service = hmac(&k_region, b"ssmmessages");
        let k_signing = hmac(&k_service, b"aws4_request");
        hex::encode(hmac(&k_signing, sts.as_bytes()))
    }

    const URL: &str = "wss://ssmmessages.us-east-1.amazonaws.com/v1/data-channel/sess-1\
                       ?cell-number=AAAA&role=publish_subscribe";

    #[test]
    fn signs_host_and_date_with_a_correct_stable_signature() {
        let a =
            signed_upgrade_request(URL, "us-east-1", &creds(None), fixed_time()).expect("signs");
        let b =
            signed_upgrade_request(URL, "us-east-1", &creds(None), fixed_time()).expect("signs");
        let auth = header(&a, "authorization").expect("authorization header");
        // Stable for fixed time and credentials, although Sec-WebSocket-Key differs per call.
        assert_eq!(Some(auth), header(&b, "authorization"));
        assert_ne!(
            header(&a, "sec-websocket-key"),
            header(&b, "sec-websocket-key")
        );
        let signature = expected_signature(
            "ssmmessages.us-east-1.amazonaws.com",
            "/v1/data-channel/sess-1",
            "cell-number=AAAA&role=publish_subscribe",
            None,
        );
        assert_eq!(
            auth,
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240102/us-east-1/ssmmessages/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={signature}"
            )
        );
        assert_eq!(header(&a, "x-amz-date"), Some("20240102T030405Z"));
        assert_eq!(header(&a, "x-amz-security-token"), None);
        // The request is still a well-formed upgrade for tungstenite.
        assert_eq!(header(&a, "upgrade"), Some("websocket"));
        assert_eq!(
            header(&a, "host"),
            Some("ssmmessages.us-east-1.amazonaws.com")
        );
        assert_eq!(a.uri().to_string(), URL);
    }

    #[test]
    fn session_token_is_sent_and_signed() {
        let req = signed_upgrade_request(URL, "us-east-1", &creds(Some("TOKEN123")), fixed_time())
            .expect("signs");
        assert_eq!(header(&req, "x-amz-security-token"), Some("TOKEN123"));
        let auth = header(&req, "authorization").expect("authorization header");
        assert!(auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token"));
        let signature = expected_signature(
            "ssmmessages.us-east-1.amazonaws.com",
            "/v1/data-channel/sess-1",
            "cell-number=AAAA&role=publish_subscribe",
            Some("TOKEN123"),
        );
        assert!(auth.ends_with(&format!("Signature={signature}")), "{auth}");
        // http's Debug hides sensitive values.
        assert!(!format!("{:?}", req.headers()).contains("TOKEN123"));
    }

    #[test]
    fn emulator_url_signs_host_with_port() {
        let url = "ws://127.0.0.1:40123/v1/data-channel/s-2?role=publish_subscribe";
        let req =
            signed_upgrade_request(url, "us-east-1", &creds(None), fixed_time()).expect("signs");
        assert_eq!(header(&req, "host"), Some("127.0.0.1:40123"));
        let signature = expected_signature(
            "127.0.0.1:40123",
            "/v1/data-channel/s-2",
            "role=publish_subscribe",
            None,
        );
        let auth = header(&req, "authorization").expect("authorization header");
        assert!(auth.ends_with(&format!("Signature={signature}")), "{auth}");
    }

    #[test]
    fn presigned_url_passes_through_unsigned() {
        let url = "wss://ssmmessages.us-east-1.amazonaws.com/v1/data-channel/s?role=x\
                   &X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc";
        assert!(is_presigned_url(url));
        let req =
            signed_upgrade_request(url, "us-east-1", &creds(None), fixed_time()).expect("builds");
        assert_eq!(header(&req, "authorization"), None);
        assert_eq!(header(&req, "x-amz-date"), None);
        assert_eq!(req.uri().to_string(), url);
        assert!(header(&req, "sec-websocket-key").is_some());
        assert!(!is_presigned_url(URL));
    }

    #[test]
    fn bad_urls_are_rejected_without_echoing_them() {
        for url in [
            "https://h/x?secret=1",
            "not a url secret=1",
            "ws:///nohost?secret=1",
        ] {
            let err = signed_upgrade_request(url, "us-east-1", &creds(None), fixed_time())
                .expect_err("rejected");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        let err =
            signed_upgrade_request(URL, "", &creds(None), fixed_time()).expect_err("no region");
        assert!(matches!(err, SignError::Signing(_)));
    }

    #[tokio::test]
    // The handshake callback's `Result<Response, ErrorResponse>` is tungstenite's signature.
    #[allow(clippy::result_large_err)]
    async fn tungstenite_accepts_the_signed_request() {
        use std::sync::{Arc, Mutex};
        use tokio_tungstenite::tungstenite::handshake::server::{
            Request as ServerRequest, Response,
        };

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen_server = Arc::clone(&seen);
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let callback = |req: &ServerRequest, resp: Response| {
                let mut seen = seen_server.lock().expect("lock");
                for (k, v) in req.headers() {
                    seen.push((k.to_string(), v.to_str().unwrap_or("").to_owned()));
                }
                Ok(resp)
            };
            tokio_tungstenite::accept_hdr_async(stream, callback)
                .await
                .map(drop)
        });
        let url = format!("ws://127.0.0.1:{port}/v1/data-channel/s-3?role=publish_subscribe");
        let req = signed_upgrade_request(&url, "us-east-1", &creds(Some("T")), SystemTime::now())
            .expect("signs");
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("handshake succeeds");
        drop(ws);
        server.await.expect("join").expect("server handshake");
        let seen = seen.lock().expect("lock");
        let names: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
        for required in [
            "authorization",
            "x-amz-date",
            "x-amz-security-token",
            "host",
        ] {
            assert!(names.contains(&required), "{required} missing in {names:?}");
        }
    }
}
