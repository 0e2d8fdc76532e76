//! One network namespace per worker, joined to the host by a veth pair (rtnetlink).
//!
//! ```text
//!  root namespace                          netns substrate-<worker>
//!  sub<i>h  10.203.x.(4i+1)/30  <--veth-->  eth0  10.203.x.(4i+2)/30, default via .(4i+1)
//!  unreachable 10.203.0.0/16                lo up
//! ```
//!
//! - Addresses come from a configurable range (default [`DEFAULT_RANGE`]); worker slot `i`
//!   gets the `i`-th /30 of it: host side `.1`, sandbox side `.2` of its block. Slots must
//!   be unique per host (they name the host interface, `sub<i>h`).
//! - Before any address is configured, an `unreachable` route for the **whole range** is
//!   ensured on the host, so traffic for a worker address that is not up never leaves the
//!   machine. No IP forwarding and no NAT are configured: the host reaches `worker_ip:port`
//!   directly over the veth, and the sandbox can reach nothing but the host side.
//! - Setup is idempotent: an existing namespace and veth pair are reused; a half-made state
//!   (stale namespace file, veth end missing or unpaired) is removed and recreated.
//! - The namespace is an `ip netns`-compatible bind mount under `/run/netns`, created by a
//!   short-lived thread that `unshare(CLONE_NEWNET)`s (namespaces are per thread), so no
//!   `fork` in a multi-threaded process and no `unsafe`. Netlink requests inside the
//!   namespace go through a socket opened by a thread that `setns`-ed into it (a netlink
//!   socket stays bound to the namespace it was created in).
//! - **runsc takes the sandbox-side address and routes off `eth0`** when it boots or
//!   restores a sandbox (gVisor's netstack owns them from then on) and does not give them
//!   back when the sandbox stops. [`WorkerNet::prepare_for_boot`] re-adds them before every
//!   boot; [`WorkerNet::setup`] deliberately leaves them alone, because adding the address
//!   while a sandbox is running would make the namespace's kernel answer (and reset) the
//!   sandbox's connections.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteType};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tracing::{debug, info, warn};

/// The default worker address range (private, unused on the development machines).
pub const DEFAULT_RANGE: &str = "10.203.0.0/16";

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The sandbox-side interface name inside the worker namespace.
pub const SANDBOX_IF: &str = "eth0";

/// Every worker gets a /30: network, host side, sandbox side, broadcast.
pub const BLOCK_PREFIX: u8 = 30;

/// What went wrong while configuring a worker's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid address range {range:?}: {detail}")]
    InvalidRange { range: String, detail: String },
    #[error(
        "worker index {index} is outside address range {range} ({slots} worker slots: 0..{slots})"
    )]
    IndexOutOfRange {
        index: u32,
        range: Ipv4Net,
        slots: u64,
    },
    #[error("invalid worker name {name:?}: {detail}")]
    InvalidWorkerName { name: String, detail: String },
    #[error(
        "address range {range} overlaps the host route {route}; choose an unused range (see `ip route`)"
    )]
    RangeConflict { range: Ipv4Net, route: String },
    #[error("netlink: cannot {op}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {path}: cannot {op}")]
    Namespace {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Missing(String),
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Netlink { op, source }
}

fn ns_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NetError {
    let path = path.to_path_buf();
    move |source| NetError::Namespace { op, path, source }
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The range worker addresses are taken from: an IPv4 network in private or shared
/// (100.64.0.0/10) space, at most a /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange(Ipv4Net);

impl FromStr for AddrRange {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |detail: String| NetError::InvalidRange {
            range: s.to_string(),
            detail,
        };
        let net: Ipv4Net = s.parse().map_err(|e| {
            bad(format!(
                "{e}; expected an IPv4 CIDR such as {DEFAULT_RANGE}"
            ))
        })?;
        if net.network() != net.addr() {
            return Err(bad(format!(
                "host bits are set; did you mean {}?",
                net.trunc()
            )));
        }
        if net.prefix_len() > BLOCK_PREFIX {
            return Err(bad(format!(
                "must be /{BLOCK_PREFIX} or larger (each worker needs a /{BLOCK_PREFIX})"
            )));
        }
        let shared: Ipv4Net = "100.64.0.0/10".parse().expect("constant CIDR");
        if !(net.addr().is_private() || shared.contains(&net)) {
            return Err(bad(
                "must be private (10/8, 172.16/12, 192.168/16) or shared (100.64/10) address space"
                    .into(),
            ));
        }
        Ok(AddrRange(net))
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Default for AddrRange {
    fn default() -> Self {
        DEFAULT_RANGE.parse().expect("default range is valid")
    }
}

impl AddrRange {
    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    /// Number of worker slots (/30 blocks).
    pub fn slots(&self) -> u64 {
        1u64 << (BLOCK_PREFIX - self.0.prefix_len())
    }

    /// The addresses of worker slot `index`.
    pub fn block(&self, index: u32) -> Result<WorkerAddrs, NetError> {
        if u64::from(index) >= self.slots() {
            return Err(NetError::IndexOutOfRange {
                index,
                range: self.0,
                slots: self.slots(),
            });
        }
        let base = u32::from(self.0.network()) + index * 4;
        Ok(WorkerAddrs {
            block: Ipv4Net::new(Ipv4Addr::from(base), BLOCK_PREFIX).expect("prefix 30 is valid"),
            host: Ipv4Addr::from(base + 1),
            worker: Ipv4Addr::from(base + 2),
        })
    }
}

/// One worker's /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerAddrs {
    pub block: Ipv4Net,
    /// The host side of the veth (the sandbox's default gateway).
    pub host: Ipv4Addr,
    /// The sandbox's address.
    pub worker: Ipv4Addr,
}

/// Which worker network to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub worker: String,
    pub index: u32,
    pub range: AddrRange,
}

impl NetSpec {
    /// Validates the worker name (a DNS-1123 subdomain of at most 200 characters) and the
    /// index against the range.
    pub fn new(worker: &str, index: u32, range: AddrRange) -> Result<Self, NetError> {
        let mut errs = crds::validation::dns1123_subdomain(worker);
        if worker.len() > 200 {
            errs.push("must be no more than 200 characters".into());
        }
        if !errs.is_empty() {
            return Err(NetError::InvalidWorkerName {
                name: worker.to_string(),
                detail: errs.join("; "),
            });
        }
        range.block(index)?;
        Ok(Self {
            worker: worker.to_string(),
            index,
            range,
        })
    }

    pub fn netns_name(&self) -> String {
        format!("substrate-{}", self.worker)
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns_name())
    }

    /// Host side of the veth pair.
    pub fn host_if(&self) -> String {
        format!("sub{}h", self.index)
    }

    /// Name of the peer end before it is moved into the namespace and renamed `eth0`.
    fn peer_tmp_if(&self) -> String {
        format!("sub{}w", self.index)
    }

    pub fn addrs(&self) -> WorkerAddrs {
        self.range
            .block(self.index)
            .expect("checked in NetSpec::new")
    }
}

/// What a worker's network looks like (for status and for the bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInfo {
    pub netns_path: PathBuf,
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub worker_ip: Ipv4Addr,
    pub prefix_len: u8,
}

/// What [`WorkerNet::setup`] had to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetupReport {
    pub created_netns: bool,
    /// The veth pair was (re)created: a sandbox that was running in the namespace has
    /// lost its interface.
    pub recreated_veth: bool,
}

/// A configured worker network (holds netlink connections to both namespaces).
pub struct WorkerNet {
    spec: NetSpec,
    addrs: WorkerAddrs,
    host: Handle,
    ns: Handle,
}

impl fmt::Debug for WorkerNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerNet")
            .field("spec", &self.spec)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

fn host_handle() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetError::Netlink {
        op: "open a netlink socket".into(),
        source: rtnetlink::Error::NamespaceError(e.to_string()),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink handle whose socket lives in the namespace at `path`.
async fn ns_handle(path: &Path) -> Result<Handle, NetError> {
    let rt = tokio::runtime::Handle::current();
    let p = path.to_path_buf();
    let joined = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            let f = File::open(&p).map_err(ns_err("open", &p))?;
            nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)
                .map_err(|e| ns_err("enter", &p)(nix_io(e)))?;
            // The socket is created here, in the namespace; registering it with the
            // reactor needs the runtime context.
            let _guard = rt.enter();
            rtnetlink::new_connection().map_err(ns_err("open a netlink socket in", &p))
        })
        .join()
    })
    .await;
    let (conn, handle, _) = match joined {
        Ok(Ok(res)) => res?,
        _ => {
            return Err(NetError::Missing(format!(
                "the thread opening a netlink socket in {} panicked",
                path.display()
            )));
        }
    };
    tokio::spawn(conn);
    Ok(handle)
}

fn is_errno(e: &rtnetlink::Error, errno: nix::errno::Errno) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == errno as i32)
}

fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// For a veth end: the ifindex of its peer (in the peer's namespace).
fn link_peer(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

async fn links(h: &Handle) -> Result<Vec<LinkMessage>, NetError> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list links"))
}

async fn find_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    Ok(links(h)
        .await?
        .into_iter()
        .find(|m| link_name(m) == Some(name)))
}

async fn require_link(h: &Handle, name: &str, where_: &str) -> Result<u32, NetError> {
    find_link(h, name)
        .await?
        .map(|m| m.header.index)
        .ok_or_else(|| NetError::Missing(format!("interface {name} is missing in {where_}")))
}

async fn delete_link(h: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, nix::errno::Errno::ENODEV) => Ok(()),
        Err(e) => Err(nl(format!("delete interface {name}"))(e)),
    }
}

async fn set_up(h: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("bring up {name}")))
}

fn is_up(m: &LinkMessage) -> bool {
    m.header.flags.contains(LinkFlags::Up)
}

fn addr_v4(m: &AddressMessage) -> Option<Ipv4Addr> {
    if m.header.family != AddressFamily::Inet {
        return None;
    }
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    })
}

/// Makes `ip/prefix` the only IPv4 address of link `index`.
async fn ensure_only_addr(
    h: &Handle,
    index: u32,
    name: &str,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetError> {
    let current: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("list addresses of {name}")))?;
    let mut present = false;
    for m in current {
        let Some(a) = addr_v4(&m) else { continue };
        if m.header.index != index {
            continue;
        }
        if a == ip && m.header.prefix_len == prefix {
            present = true;
        } else {
            debug!(interface = name, address = %a, "removing stale address");
            h.address()
                .del(m)
                .execute()
                .await
                .map_err(nl(format!("remove address {a} from {name}")))?;
        }
    }
    if !present {
        match h.address().add(index, ip.into(), prefix).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(nl(format!("add {ip}/{prefix} to {name}"))(e)),
        }
    }
    Ok(())
}

fn route_dst(h: &RouteHeader, attrs: &[RouteAttribute]) -> Option<Ipv4Net> {
    let dst = attrs.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    });
    match dst {
        Some(ip) => Ipv4Net::new(ip, h.destination_prefix_length).ok(),
        None if h.destination_prefix_length == 0 => {
            Some(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid"))
        }
        None => None,
    }
}

fn route_table(h: &RouteHeader, attrs: &[RouteAttribute]) -> u32 {
    attrs
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table))
}

/// Ensures the host has `unreachable <range>` in the main table, after checking that no
/// other host route overlaps the range (which would mean the range is in use here).
pub async fn ensure_unreachable_route(h: &Handle, range: &AddrRange) -> Result<(), NetError> {
    let range_net = range.net();
    let routes: Vec<_> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes"))?;
    let names: Vec<(u32, String)> = links(h)
        .await?
        .iter()
        .filter_map(|m| link_name(m).map(|n| (m.header.index, n.to_string())))
        .collect();
    let mut present = false;
    for r in &routes {
        if r.header.address_family != AddressFamily::Inet
            || route_table(&r.header, &r.attributes) != u32::from(RouteHeader::RT_TABLE_MAIN)
        {
            continue;
        }
        let Some(dst) = route_dst(&r.header, &r.attributes) else {
            continue;
        };
        if dst.prefix_len() == 0 {
            continue; // the default route covers everything by design
        }
        let overlaps = range_net.contains(&dst.network()) || dst.contains(&range_net.network());
        if !overlaps {
            continue;
        }
        if r.header.kind == RouteType::Unreachable && dst == range_net {
            present = true;
            continue;
        }
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let oif_name = oif.and_then(|i| names.iter().find(|(idx, _)| *idx == i).map(|(_, n)| n));
        let ours = oif_name.is_some_and(|n| is_worker_host_if(n)) && range_net.contains(&dst);
        if !ours {
            return Err(NetError::RangeConflict {
                range: range_net,
                route: format!(
                    "{dst}{}",
                    oif_name.map(|n| format!(" dev {n}")).unwrap_or_default()
                ),
            });
        }
    }
    if !present {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(range_net.network(), range_net.prefix_len())
            .kind(RouteType::Unreachable)
            .build();
        match h.route().add(msg).execute().await {
            Ok(()) => info!(range = %range_net, "added unreachable route for the worker range"),
            Err(e) if is_errno(&e, nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(nl(format!("add `unreachable {range_net}`"))(e)),
        }
    }
    Ok(())
}

/// `sub<digits>h`: a worker veth host end.
fn is_worker_host_if(name: &str) -> bool {
    name.strip_prefix("sub")
        .and_then(|r| r.strip_suffix('h'))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `path` is a mounted network namespace (nsfs), as opposed to a stale file.
fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Like iproute2: make `/run/netns` a shared mount point (bind-mounting it onto itself
/// first if it is not a mount point), so namespace mounts propagate to mount namespaces
/// created later.
fn ensure_netns_dir() -> Result<(), NetError> {
    let dir = Path::new(NETNS_DIR);
    fs::create_dir_all(dir).map_err(ns_err("create directory", dir))?;
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| ns_err("bind-mount", dir)(nix_io(e)))?;
            shared().map_err(|e| ns_err("make shared", dir)(nix_io(e)))
        }
        Err(e) => Err(ns_err("make shared", dir)(nix_io(e))),
    }
}

/// Creates the named namespace (a bind mount of a fresh netns at `path`). Returns whether
/// it had to be created.
async fn ensure_netns(path: &Path) -> Result<bool, NetError> {
    if is_netns(path) {
        return Ok(false);
    }
    ensure_netns_dir()?;
    if path.exists() {
        warn!(path = %path.display(), "removing stale network namespace file");
        let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
        fs::remove_file(path).map_err(ns_err("remove stale file", path))?;
    }
    let p = path.to_path_buf();
    let joined = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> Result<(), NetError> {
            File::options()
                .write(true)
                .create_new(true)
                .open(&p)
                .map_err(ns_err("create mount point", &p))?;
            let made = nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| ns_err("unshare", &p)(nix_io(e)))
                .and_then(|()| {
                    nix::mount::mount(
                        Some("/proc/thread-self/ns/net"),
                        &p,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(|e| ns_err("bind-mount", &p)(nix_io(e)))
                });
            if made.is_err() {
                let _ = fs::remove_file(&p);
            }
            made
        })
        .join()
    })
    .await;
    match joined {
        Ok(Ok(res)) => res?,
        _ => {
            return Err(NetError::Missing(format!(
                "the thread creating {} panicked",
                path.display()
            )));
        }
    }
    info!(path = %path.display(), "created network namespace");
    Ok(true)
}

async fn remove_netns(path: &Path) -> Result<(), NetError> {
    if !path.exists() {
        return Ok(());
    }
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(ns_err("unmount", path)(nix_io(e))),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ns_err("remove", path)(e)),
    }
}

impl WorkerNet {
    /// Sets up (or converges) the worker's namespace and veth pair; see the module docs.
    /// Does not configure the sandbox-side address (see [`WorkerNet::prepare_for_boot`]).
    pub async fn setup(spec: NetSpec) -> Result<(Self, SetupReport), NetError> {
        let addrs = spec.addrs();
        let host = host_handle()?;
        // Safety first: the whole range is unreachable before any address exists.
        ensure_unreachable_route(&host, &spec.range).await?;
        let path = spec.netns_path();
        let created_netns = ensure_netns(&path).await?;
        let ns = ns_handle(&path).await?;
        let host_if = spec.host_if();
        let tmp_if = spec.peer_tmp_if();

        let host_link = find_link(&host, &host_if).await?;
        let ns_link = find_link(&ns, SANDBOX_IF).await?;
        let paired = match (&host_link, &ns_link) {
            (Some(h), Some(n)) => link_peer(n) == Some(h.header.index),
            _ => false,
        };
        let mut recreated_veth = false;
        if !paired {
            if host_link.is_some() || ns_link.is_some() {
                warn!(worker = %spec.worker, host_if = %host_if, "veth pair incomplete or unpaired; recreating");
            }
            if let Some(l) = &host_link {
                delete_link(&host, l.header.index, &host_if).await?;
            }
            if let Some(l) = &ns_link {
                delete_link(&ns, l.header.index, SANDBOX_IF).await?;
            }
            for h in [&host, &ns] {
                if let Some(l) = find_link(h, &tmp_if).await? {
                    delete_link(h, l.header.index, &tmp_if).await?;
                }
            }
            host.link()
                .add(LinkVeth::new(&host_if, &tmp_if).build())
                .execute()
                .await
                .map_err(nl(format!("create veth pair {host_if}/{tmp_if}")))?;
            let peer = require_link(&host, &tmp_if, "the root namespace").await?;
            let ns_file = File::open(&path).map_err(ns_err("open", &path))?;
            host.link()
                .set(
                    LinkUnspec::new_with_index(peer)
                        .setns_by_fd(ns_file.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!("move {tmp_if} into {}", path.display())))?;
            let moved = require_link(&ns, &tmp_if, &spec.netns_name()).await?;
            ns.link()
                .set(LinkUnspec::new_with_index(moved).name(SANDBOX_IF).build())
                .execute()
                .await
                .map_err(nl(format!("rename {tmp_if} to {SANDBOX_IF}")))?;
            recreated_veth = true;
            info!(worker = %spec.worker, host_if = %host_if, netns = %spec.netns_name(), "created veth pair");
        }

        let host_idx = require_link(&host, &host_if, "the root namespace").await?;
        ensure_only_addr(&host, host_idx, &host_if, addrs.host, BLOCK_PREFIX).await?;
        set_up(&host, host_idx, &host_if).await?;
        let lo = require_link(&ns, "lo", &spec.netns_name()).await?;
        set_up(&ns, lo, "lo").await?;

        Ok((
            Self {
                spec,
                addrs,
                host,
                ns,
            },
            SetupReport {
                created_netns,
                recreated_veth,
            },
        ))
    }

    /// Configures the sandbox side for the next boot: `eth0` up with the worker address
    /// and a default route via the host side (runsc removes both when it boots a sandbox).
    /// Only call this while no sandbox runs in the namespace.
    pub async fn prepare_for_boot(&self) -> Result<(), NetError> {
        let where_ = self.spec.netns_name();
        let host_if = self.spec.host_if();
        let host = find_link(&self.host, &host_if)
            .await?
            .ok_or_else(|| NetError::Missing(format!("interface {host_if} is missing in the root namespace; restart the executor to recreate the worker network")))?;
        if !is_up(&host) {
            set_up(&self.host, host.header.index, &host_if).await?;
        }
        let eth = find_link(&self.ns, SANDBOX_IF).await?.ok_or_else(|| {
            NetError::Missing(format!(
                "interface {SANDBOX_IF} is missing in {where_}; restart the executor to recreate the worker network"
            ))
        })?;
        let idx = eth.header.index;
        ensure_only_addr(&self.ns, idx, SANDBOX_IF, self.addrs.worker, BLOCK_PREFIX).await?;
        if !is_up(&eth) {
            set_up(&self.ns, idx, SANDBOX_IF).await?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(self.addrs.host)
            .output_interface(idx)
            .build();
        self.ns
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl(format!(
                "add default route via {} in {where_}",
                self.addrs.host
            )))?;
        Ok(())
    }

    pub fn spec(&self) -> &NetSpec {
        &self.spec
    }

    pub fn info(&self) -> NetInfo {
        NetInfo {
            netns_path: self.spec.netns_path(),
            host_if: self.spec.host_if(),
            host_ip: self.addrs.host,
            worker_ip: self.addrs.worker,
            prefix_len: BLOCK_PREFIX,
        }
    }

    /// Removes the veth pair and the namespace (the unreachable route stays: it covers
    /// other workers and is harmless).
    pub async fn teardown(self) -> Result<(), NetError> {
        teardown_with(&self.host, &self.spec).await
    }
}

/// Removes a worker's veth pair and namespace without a prior [`WorkerNet::setup`]
/// (idempotent).
pub async fn teardown(spec: &NetSpec) -> Result<(), NetError> {
    let host = host_handle()?;
    teardown_with(&host, spec).await
}

async fn teardown_with(host: &Handle, spec: &NetSpec) -> Result<(), NetError> {
    let host_if = spec.host_if();
    if let Some(l) = find_link(host, &host_if).await? {
        delete_link(host, l.header.index, &host_if).await?;
    }
    if let Some(l) = find_link(host, &spec.peer_tmp_if()).await? {
        delete_link(host, l.header.index, &spec.peer_tmp_if()).await?;
    }
    remove_netns(&spec.netns_path()).await?;
    info!(worker = %spec.worker, "worker network removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_consecutive_30s() {
        let r = AddrRange::default();
        assert_eq!(r.slots(), 16384);
        let b0 = r.block(0).unwrap();
        assert_eq!(b0.block.to_string(), "10.203.0.0/30");
        assert_eq!(b0.host, Ipv4Addr::new(10, 203, 0, 1));
        assert_eq!(b0.worker, Ipv4Addr::new(10, 203, 0, 2));
        let b1 = r.block(1).unwrap();
        assert_eq!(b1.host, Ipv4Addr::new(10, 203, 0, 5));
        assert_eq!(b1.worker, Ipv4Addr::new(10, 203, 0, 6));
        let last = r.block(16383).unwrap();
        assert_eq!(last.worker, Ipv4Addr::new(10, 203, 255, 254));
        assert!(r.net().contains(&last.block));
        let err = r.block(16384).unwrap_err();
        assert!(
            matches!(err, NetError::IndexOutOfRange { slots: 16384, .. }),
            "{err}"
        );
    }

    #[test]
    fn ranges_are_validated_precisely() {
        let err = "10.203.0.1/16".parse::<AddrRange>().unwrap_err();
        assert!(
            err.to_string().contains("did you mean 10.203.0.0/16"),
            "{err}"
        );
        let err = "10.203.0.0/31".parse::<AddrRange>().unwrap_err();
        assert!(err.to_string().contains("/30 or larger"), "{err}");
        let err = "8.8.0.0/16".parse::<AddrRange>().unwrap_err();
        assert!(err.to_string().contains("private"), "{err}");
        let err = "fd00::/64".parse::<AddrRange>().unwrap_err();
        assert!(err.to_string().contains("IPv4 CIDR"), "{err}");
        assert_eq!("100.64.4.0/24".parse::<AddrRange>().unwrap().slots(), 64);
        assert_eq!("192.168.7.0/30".parse::<AddrRange>().unwrap().slots(), 1);
    }

    #[test]
    fn names_follow_the_spec() {
        let s = NetSpec::new("pool-a-0", 7, AddrRange::default()).unwrap();
        assert_eq!(
            s.netns_path(),
            PathBuf::from("/run/netns/substrate-pool-a-0")
        );
        assert_eq!(s.host_if(), "sub7h");
        assert!(is_worker_host_if(&s.host_if()));
        assert!(!is_worker_host_if("sub7w"));
        assert!(!is_worker_host_if("subh"));
        assert!(!is_worker_host_if("eth0"));
        // The longest possible host interface name fits IFNAMSIZ (15).
        let big = NetSpec::new("w", 4_194_303, "10.0.0.0/8".parse().unwrap()).unwrap();
        assert!(big.host_if().len() <= 15 && big.peer_tmp_if().len() <= 15);
        assert!(matches!(
            NetSpec::new("Bad_Name", 0, AddrRange::default()),
            Err(NetError::InvalidWorkerName { .. })
        ));
        assert!(matches!(
            NetSpec::new("w", 99_999, AddrRange::default()),
            Err(NetError::IndexOutOfRange { .. })
        ));
    }
}
