//! A JetStream cluster of real `nats-server`s on 127.0.0.1, for tests that
//! kill a node under load.
//!
//! A route needs its peer's cluster port before the peer starts, so the
//! servers cannot pick their own ports here as a lone [`NatsServer`] does.
//! Every port (clients and routes) is taken first by a [`PortHold`]: bound by
//! the kernel's choice, never listening, held to the drop. No other process
//! can get a held port, while the server it is held for listens on it
//! (`port`'s module doc), so the configs can name each other's ports with no
//! race, and a killed node restarts on the same ones.

use std::path::Path;

use crate::nats::NatsServer;
use crate::port::PortHold;

pub struct NatsCluster {
    name: String,
    nodes: Vec<NatsServer>,
    /// The route ports, held to the drop (the client ports are held by
    /// their servers).
    _routes: Vec<PortHold>,
}

impl NatsCluster {
    /// Starts `size` servers with JetStream, routed to each other, and
    /// returns once each accepts clients. JetStream elects its meta leader
    /// in the background: the first stream request may answer "temporarily
    /// unavailable" for a moment (services retry; tests wait).
    pub fn start(size: usize) -> Self {
        Self::start_with(size, "")
    }

    /// As [`start`](Self::start), with `jetstream` added to every server's
    /// JetStream block (e.g. `sync_interval: always`).
    pub fn start_with(size: usize, jetstream: &str) -> Self {
        assert!(size >= 1, "a cluster has a node");
        let name = format!("test_{:08x}", rand::random::<u32>());
        let hold = || PortHold::on(0).expect("the OS gives out a port");
        let clients: Vec<PortHold> = (0..size).map(|_| hold()).collect();
        let routes: Vec<PortHold> = (0..size).map(|_| hold()).collect();
        let route_ports: Vec<u16> = routes.iter().map(PortHold::port).collect();
        let nodes = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                let server_name = Self::node_name(&name, i);
                let own = route_ports[i];
                let peers: Vec<String> = route_ports
                    .iter()
                    .filter(|&&p| p != own)
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                let cluster = name.clone();
                NatsServer::start_conf_on(Some(client), |store: &Path| {
                    format!(
                        "server_name: {server_name}\n\
                         jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 4GB\n  {jetstream}\n}}\n\
                         cluster {{\n  name: {cluster}\n  listen: 127.0.0.1:{own}\n  routes: [{}]\n}}\n",
                        peers.join(", ")
                    )
                })
            })
            .collect();
        Self {
            name,
            nodes,
            _routes: routes,
        }
    }

    fn node_name(cluster: &str, i: usize) -> String {
        format!("{cluster}_n{i}")
    }

    /// The server name of node `i` (as JetStream's cluster info reports
    /// stream and consumer leaders).
    pub fn server_name(&self, i: usize) -> String {
        Self::node_name(&self.name, i)
    }

    /// The node whose server name is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.server_name(i) == name)
    }

    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// To kill or restart node `i`.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, comma separated: what a client is given, as
    /// `NATS_URL` or `[nats] servers`, to fail over to another node.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
