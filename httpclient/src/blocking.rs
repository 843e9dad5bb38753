//! The client for synchronous callers (the bench): each call runs on the client's own
//! single-threaded runtime.

use crate::{ClientError, Config, Request, Response};

#[derive(Debug)]
pub struct Client {
    inner: crate::Client,
    rt: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(config: Config) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        Ok(Self {
            inner: crate::Client::new(config),
            rt,
        })
    }

    pub fn config(&self) -> &Config {
        self.inner.config()
    }

    /// [`crate::Client::send`], blocking. Must not be called from inside a tokio runtime.
    pub fn send(&self, req: Request) -> Result<Response, ClientError> {
        self.rt.block_on(self.inner.send(req))
    }
}
