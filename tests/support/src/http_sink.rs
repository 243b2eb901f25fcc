//! An HTTP/1.1 server on loopback that answers every request 200 with an empty body and hands
//! each request's line and body to the test: a stand-in for a collector (OpenTelemetry's OTLP
//! receiver, say) that a test or the benchmark points a worker at.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// What one request was: its request line (`POST /v1/traces HTTP/1.1`) and its body.
pub type Received = (String, Vec<u8>);

/// The sink's address, for as long as the test runs (its threads end with the process).
#[derive(Debug)]
pub struct HttpSink {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl HttpSink {
    /// Starts the sink; `received` gets every request, on the connection's own thread.
    pub fn start(received: impl Fn(Received) + Send + Sync + 'static) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let received = Arc::new(received);
        std::thread::spawn(move || {
            for connection in listener.incoming().map_while(Result::ok) {
                let received = received.clone();
                std::thread::spawn(move || {
                    let _ = serve(connection, &*received);
                });
            }
        });
        Ok(Self { url })
    }
}

/// Answers one connection's requests, kept alive, until the client closes it.
fn serve(connection: TcpStream, received: &dyn Fn(Received)) -> std::io::Result<()> {
    let mut reader = BufReader::new(connection.try_clone()?);
    let mut writer = connection;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(std::io::Error::other)?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        received((request_line.trim_end().to_owned(), body));
        writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
    }
}
