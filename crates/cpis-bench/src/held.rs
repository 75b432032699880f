//! (12)'s council streams: one `Subscribe` per council, held for the whole
//! phase on the Notification replicas (council `i` on replica `i mod 2`, as
//! a load balancer would spread them), each recording when every alert
//! arrived and checking what a council's case system relies on: its own
//! alerts only, each once, in sequence order with no gap. A stream that
//! breaks is opened again after the last sequence seen, as a council would.

use super::net::{council, Net};
use cpis_proto::notification::v1::{
    notification_service_client::NotificationServiceClient, subscribe_response::Event, SubscribeRequest,
};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the streams have seen so far (counters only ever grow).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Seen {
    /// Alerts received.
    pub received: u64,
    /// Alerts of an episode already seen.
    pub duplicated: u64,
    /// Alerts whose sequence was not the last one seen plus one.
    pub out_of_order: u64,
    /// Alerts for another council than the stream's.
    pub wrong_council: u64,
    /// Streams that broke and were opened again.
    pub reopened: u64,
}

#[derive(Debug, Default)]
struct Book {
    arrived: HashMap<String, Instant>,
    seen: Seen,
}

/// The held streams.
pub struct Held {
    book: Arc<Mutex<Book>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Held {
    /// Opens a stream per council of `councils` on the Notification
    /// replicas at `ports`, each from sequence 0 (a fresh register).
    pub async fn open(net: &Net, ports: &[u16], councils: &[String]) -> anyhow::Result<Held> {
        let book: Arc<Mutex<Book>> = Arc::default();
        let mut readers = Vec::new();
        let mut first_messages = Vec::new();
        for (i, code) in councils.iter().enumerate() {
            let port = ports[i % ports.len().max(1)];
            let channel = net.fresh_channel(port, &council(code)?)?;
            let (opened, is_open) = tokio::sync::oneshot::channel();
            first_messages.push(is_open);
            readers.push(tokio::spawn(read(
                NotificationServiceClient::new(channel),
                code.clone(),
                book.clone(),
                opened,
            )));
        }
        for (code, is_open) in councils.iter().zip(first_messages) {
            match tokio::time::timeout(Duration::from_secs(60), is_open).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => anyhow::bail!("Subscribe as {code}: {e}"),
                _ => anyhow::bail!("Subscribe as {code}: no stream within 60 s"),
            }
        }
        Ok(Held { book, readers })
    }

    /// The counters now.
    pub fn seen(&self) -> Seen {
        self.book.lock().map(|b| b.seen).unwrap_or_default()
    }

    /// When the alert of `episode` first arrived, if it has.
    pub fn arrival(&self, episode: &str) -> Option<Instant> {
        self.book.lock().ok().and_then(|b| b.arrived.get(episode).copied())
    }

    /// How many of `episodes` have not arrived yet.
    pub fn missing<'a>(&self, episodes: impl Iterator<Item = &'a str>) -> usize {
        let Ok(book) = self.book.lock() else { return usize::MAX };
        episodes.filter(|e| !book.arrived.contains_key(*e)).count()
    }

    /// Closes every stream.
    pub fn close(self) {
        for r in self.readers {
            r.abort();
        }
    }
}

/// Reads one council's stream for ever, opening it again after a break.
async fn read(
    mut client: NotificationServiceClient<tonic::transport::Channel>,
    code: String,
    book: Arc<Mutex<Book>>,
    opened: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut opened = Some(opened);
    let mut last = 0i64;
    loop {
        let request = SubscribeRequest { after_sequence: last, replay: true };
        let stream = match client.subscribe(request).await {
            Ok(s) => {
                if let Some(tx) = opened.take() {
                    let _ = tx.send(Ok(()));
                }
                s.into_inner()
            }
            Err(s) => {
                if let Some(tx) = opened.take() {
                    let _ = tx.send(Err(format!("{:?}: {}", s.code(), s.message())));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut stream = stream;
        while let Ok(Some(msg)) = stream.message().await {
            let Some(Event::Alert(alert)) = msg.event else { continue };
            let now = Instant::now();
            let Ok(mut book) = book.lock() else { return };
            book.seen.received += 1;
            if alert.council_code != code {
                book.seen.wrong_council += 1;
            }
            if alert.sequence != last + 1 {
                book.seen.out_of_order += 1;
            }
            last = last.max(alert.sequence);
            let episode = alert.episode.map(|e| e.episode_id).unwrap_or_default();
            match book.arrived.entry(episode) {
                std::collections::hash_map::Entry::Occupied(_) => book.seen.duplicated += 1,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(now);
                }
            }
        }
        if let Ok(mut book) = book.lock() {
            book.seen.reopened += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
