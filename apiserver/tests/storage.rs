//! The storage suite (`storage/suite.rs`) against a Valkey that anyone may use.

#[path = "storage/suite.rs"]
mod suite;

fn start_valkey() -> apiserver::testing::ValkeyServer {
    apiserver::testing::ValkeyServer::start()
}
