//! The storage suite (`storage/suite.rs`) against a Valkey set up as in a cluster: the ACL
//! rules of `config/valkey/users.acl.tmpl` (`default` off), the store logging in as
//! `substrate-apiserver`. Proves those permissions are enough for every write, read, load
//! and the watch feed, including its reconnection (and login) after a Valkey restart.

#[path = "storage/suite.rs"]
mod suite;

fn start_valkey() -> apiserver::testing::ValkeyServer {
    apiserver::testing::ValkeyServer::start_with_auth(apiserver::testing::ValkeyAuth::cluster(
        "apiserver-test-password",
    ))
}
