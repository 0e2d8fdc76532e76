//! `counter` binary: see the library documentation for the HTTP interface.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let config = match counter::Config::from_env(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("counter: {e}");
            return ExitCode::from(2);
        }
    };
    let state = Arc::new(counter::State::new(config.data_file.clone()));
    let listener = match TcpListener::bind(config.addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("counter: listening on {}: {e}", config.addr);
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(config.addr);
    eprintln!(
        "counter: listening on {addr} (data file {})",
        config.data_file.display()
    );
    match counter::serve(listener, state) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("counter: {e}");
            ExitCode::from(1)
        }
    }
}
