//! One way to start the app for a test: the real application, built by the
//! library as `simplechat serve` builds it, on a real loopback port.

use std::path::{Path, PathBuf};

use figment::providers::Serialized;
use figment::{Figment, Profile};
use serde_json::{json, Value};

use simplechat::config::{layered, Config};

pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    shutdown: rocket::Shutdown,
    server: tokio::task::JoinHandle<()>,
    _temp: Option<tempfile::TempDir>,
}

/// Starts the app on the embedded store in a fresh data directory, with the
/// given configuration keys on top (e.g. `("mongodb_uri", json!(uri))`).
pub async fn spawn_app(extra: &[(&str, Value)]) -> TestApp {
    let temp = tempfile::tempdir().expect("temp dir");
    let mut app = spawn_app_in(temp.path(), extra).await;
    app._temp = Some(temp);
    app
}

/// Starts the app with its embedded store in `data_dir` (kept by the caller,
/// so a second app can reopen it).
pub async fn spawn_app_in(data_dir: &Path, extra: &[(&str, Value)]) -> TestApp {
    try_spawn_app_in(data_dir, extra)
        .await
        .unwrap_or_else(|e| panic!("app did not start: {e}"))
}

pub fn test_figment(data_dir: &Path, extra: &[(&str, Value)]) -> Figment {
    let base = Figment::from(rocket::Config::debug_default());
    let mut figment = layered(base, Path::new("/nonexistent/simplechat.toml")).merge(
        Serialized::globals(json!({
            "port": 0,
            "data_dir": data_dir,
            "log_level": "critical",
            "shutdown": { "grace": 1, "mercy": 1, "ctrlc": false, "signals": [] },
        })),
    );
    for (key, value) in extra {
        figment = figment.merge(Serialized::default(key, value).profile(Profile::Global));
    }
    figment
}

pub async fn try_spawn_app_in(data_dir: &Path, extra: &[(&str, Value)]) -> Result<TestApp, String> {
    let config = Config::from_figment(test_figment(data_dir, extra)).map_err(|e| e.to_string())?;
    // The same start as `simplechat serve`: the front door, then Rocket.
    let server = simplechat::app::start(config).await?;
    let shutdown = server.shutdown_handle();
    let port = server.address.port();
    let server = tokio::spawn(async move {
        if let Err(e) = server.wait().await {
            eprintln!("server ended with an error: {e}");
        }
    });
    Ok(TestApp {
        base_url: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // The server closes a kept-alive connection once idle for its
            // header timeout (1 s in some tests): a request sent on one
            // as it closes meets the close (`IncompleteMessage`), which a
            // browser would retry and reqwest does not.
            .pool_idle_timeout(std::time::Duration::from_millis(500))
            .build()
            .map_err(|e| e.to_string())?,
        data_dir: data_dir.to_path_buf(),
        shutdown,
        server,
        _temp: None,
    })
}

impl TestApp {
    /// Sends `request` as raw bytes on a new connection and returns all the
    /// server sends until it closes (within a minute, or the test fails).
    pub async fn raw(&self, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = self.base_url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            stream.read_to_end(&mut answer),
        )
        .await
        .expect("the server answered and closed the connection")
        .unwrap_or_default();
        String::from_utf8_lossy(&answer).into_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON body")
    }

    /// POSTs `body` as it is, with `content_type`; `Err` only when the
    /// request could not be sent.
    pub async fn post_body(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// How many messages the latest listing (default limit) holds.
    /// The texts of the messages the JSON listing at `path` answers with,
    /// in its order.
    pub async fn texts(&self, path: &str) -> Vec<String> {
        self.get_json(path)
            .await
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|m| m["text"].as_str().expect("a text").to_owned())
            .collect()
    }

    pub async fn message_count(&self) -> usize {
        self.get_json("/api/messages")
            .await
            .as_array()
            .expect("a JSON array")
            .len()
    }

    /// Posts a message and returns the stored message; panics unless 201.
    pub async fn post_message(&self, name: &str, text: &str) -> Value {
        let response = self
            .post_json("/api/messages", &json!({ "name": name, "text": text }))
            .await;
        assert_eq!(response.status(), 201, "POST /api/messages");
        response.json().await.expect("JSON body")
    }

    /// Posts each of `texts` under `name`, in order; the stored ids, in the
    /// same order.
    pub async fn post_texts(
        &self,
        name: &str,
        texts: impl IntoIterator<Item = String>,
    ) -> Vec<String> {
        let mut ids = Vec::new();
        for text in texts {
            let posted = self.post_message(name, &text).await;
            ids.push(posted["id"].as_str().expect("an id").to_owned());
        }
        ids
    }

    /// Ends the server as SIGTERM would, and waits until the store is closed.
    pub async fn shutdown(self) {
        self.shutdown.notify();
        let _ = self.server.await;
    }
}
