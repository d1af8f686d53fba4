//! The credentials authority behind `sysmonstm creds`: an operator, the
//! system account and the SYSMON account (with a signing key), kept as nkey
//! seeds and JWTs in one directory, and the users it issues, each with the
//! least the broker must let it do.
//!
//! The hub and the edge load `resolver.conf` from that directory (the
//! operator JWT, the system account and a MEMORY resolver with the account
//! JWTs preloaded): no password appears in a server config. Revoking a user
//! re-signs the account JWT with a revocation and rewrites `resolver.conf`;
//! a server picks it up on a config reload (`nats-server --signal reload`).
//!
//! The directory holds secrets: it is created 0700 and every seed and
//! `.creds` file 0600.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sysmonstm_schemas::{MachineId, streams, subjects};

use crate::jwt::{self, AccountLimits, AccountNats, Claims, OperatorNats, Permission, UserNats};

#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} already holds a credentials authority; use it, or choose another directory")]
    Exists(PathBuf),
    #[error("{0} holds no credentials authority; run `sysmonstm creds init {0}` first")]
    Missing(PathBuf),
    #[error("{0} is damaged: {1}")]
    Damaged(PathBuf, String),
    #[error("nothing was issued under the name {0:?}")]
    Unknown(String),
    #[error("{0}")]
    Jwt(#[from] jwt::JwtError),
    #[error(
        "{0:?} is not a leaf URL: nats-leaf://, tls://, nats://, ws:// or wss://, a host and a port, \
         nothing else"
    )]
    BadUrl(String),
    #[error(
        "the {role} credential is issued by the {wants} authority, and {dir} holds the {is} one"
    )]
    WrongDomain {
        role: String,
        wants: Domain,
        is: Domain,
        dir: PathBuf,
    },
}

/// Which server an authority's credentials are for. The edge has an
/// operator of its own: it faces the internet, so nothing issued for it
/// (the edge gateway's credential, the leaf link's) is accepted by the hub,
/// and no hub credential is accepted at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Hub,
    Edge,
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hub => "hub",
            Self::Edge => "edge",
        })
    }
}

impl Domain {
    fn operator_name(self) -> &'static str {
        match self {
            Self::Hub => "sysmonstm",
            Self::Edge => "sysmonstm-edge",
        }
    }

    fn account_name(self) -> &'static str {
        match self {
            Self::Hub => "SYSMON",
            Self::Edge => "SYSMON_EDGE",
        }
    }
}

/// Who a user is for, which decides what it may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "role", content = "machine")]
pub enum Role {
    /// Publishes its own snapshots and facts; reads nothing.
    Agent(String),
    Persister,
    Alerter,
    Gateway,
    /// Takes alert events through its durable consumer, keeps its buckets,
    /// records its failures, answers notify tests.
    Notifier,
    /// Reads alerts, acknowledges them, edits rules, forgets machines.
    Cli,
    /// Reads only.
    CliReadOnly,
    /// Edge: the hub's leaf link (issued at the edge, used by the hub).
    Leaf,
    /// Edge: creates and updates the edge streams (`sysmonstm edge setup`).
    EdgeAdmin,
    /// Edge: the edge gateway; reads the edge streams and publishes nothing.
    EdgeGateway,
    /// Bench hubs only: publishes snapshots and facts as any machine
    /// (`sysmonstm-loadgen`, `just bench stack`). Never issue it on a hub
    /// that real agents use: it can impersonate every one of them.
    Loadgen,
}

fn join<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

impl Role {
    /// The user's name in the issued list (and its `.creds` file name).
    pub fn name(&self) -> String {
        match self {
            Self::Agent(m) => format!("agent-{m}"),
            Self::Persister => "persister".into(),
            Self::Alerter => "alerter".into(),
            Self::Gateway => "gateway".into(),
            Self::Notifier => "notifier".into(),
            Self::Cli => "cli".into(),
            Self::CliReadOnly => "cli-read-only".into(),
            Self::Leaf => "leaf".into(),
            Self::EdgeAdmin => "edge-admin".into(),
            Self::EdgeGateway => "edge-gateway".into(),
            Self::Loadgen => "loadgen".into(),
        }
    }

    /// The authority that issues it.
    pub fn domain(&self) -> Domain {
        match self {
            Self::Leaf | Self::EdgeAdmin | Self::EdgeGateway => Domain::Edge,
            _ => Domain::Hub,
        }
    }

    /// What the broker lets this user publish and subscribe to.
    pub fn permissions(&self) -> (Permission, Permission) {
        let allow = |v: &[&str]| Permission {
            allow: v.iter().map(|s| (*s).to_owned()).collect(),
            deny: Vec::new(),
        };
        // Reading JetStream: stream and consumer info, ephemeral and
        // ordered consumers, pulling, acking, direct gets (KV reads).
        const JS_READ: &[&str] = &[
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.*",
            "$JS.API.STREAM.NAMES",
            "$JS.API.STREAM.LIST",
            "$JS.API.STREAM.MSG.GET.*",
            "$JS.API.DIRECT.GET.>",
            "$JS.API.CONSUMER.CREATE.>",
            "$JS.API.CONSUMER.DURABLE.CREATE.>",
            "$JS.API.CONSUMER.INFO.>",
            "$JS.API.CONSUMER.DELETE.>",
            "$JS.API.CONSUMER.MSG.NEXT.>",
            "$JS.ACK.>",
            "$JS.FC.>",
        ];
        // Reading the edge's streams: no durable consumers, no deletes, no
        // flow control (which would cross the leaf link).
        const EDGE_READ: &[&str] = &[
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.*",
            "$JS.API.STREAM.NAMES",
            "$JS.API.STREAM.LIST",
            "$JS.API.STREAM.MSG.GET.*",
            "$JS.API.DIRECT.GET.>",
            "$JS.API.CONSUMER.CREATE.>",
            "$JS.API.CONSUMER.INFO.>",
            "$JS.API.CONSUMER.MSG.NEXT.>",
            "$JS.ACK.>",
        ];
        // Creating and updating the streams and buckets (only their owners).
        const JS_ADMIN: &[&str] = &["$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*"];
        let inbox = [subjects::INBOX_ALL];

        match self {
            Self::Agent(m) => match MachineId::parse(m) {
                Ok(id) => (
                    Permission {
                        // The hub checks a publish against the subject after
                        // its account mapped it to a METRICS partition
                        // (`sysmon.metrics.<p>.<m>`), so both forms.
                        allow: vec![
                            subjects::metrics(&id),
                            format!("sysmon.metrics.*.{id}"),
                            subjects::info(&id),
                        ],
                        deny: Vec::new(),
                    },
                    Permission {
                        allow: vec![format!("{}.>", subjects::agent_inbox_prefix(&id))],
                        deny: Vec::new(),
                    },
                ),
                // An empty allow list would allow everything: deny it all.
                // (`issue` refuses an invalid id before it gets here.)
                Err(_) => {
                    let none = Permission {
                        allow: Vec::new(),
                        deny: vec![">".into()],
                    };
                    (none.clone(), none)
                }
            },
            // The persister and the alerter answer `machines forget`
            // requests, on the asker's inbox.
            Self::Persister => (
                allow(&join(&[JS_READ, JS_ADMIN, &inbox])),
                allow(&join(&[&inbox, &[subjects::FORGET_ALL]])),
            ),
            Self::Alerter => (
                allow(&join(&[
                    JS_READ,
                    JS_ADMIN,
                    &[
                        subjects::ALERTS_ALL,
                        "$KV.sysmon_alert_state.>",
                        "$KV.sysmon_rules.>",
                    ],
                    &inbox,
                ])),
                allow(&join(&[
                    &inbox,
                    &[subjects::METRICS_LIVE, subjects::FORGET_ALL],
                ])),
            ),
            // The gateway answers forget requests too.
            Self::Gateway => (
                allow(&join(&[
                    JS_READ,
                    &["$JS.API.STREAM.CREATE.*", "$KV.sysmon_rules.>"],
                    &inbox,
                ])),
                allow(&join(&[
                    &inbox,
                    &[subjects::METRICS_LIVE, subjects::FORGET_ALL],
                ])),
            ),
            Self::Notifier => {
                let pubs = notifier_publish();
                let pubs: Vec<&str> = pubs.iter().map(String::as_str).collect();
                (
                    allow(&join(&[&pubs, &inbox])),
                    allow(&join(&[&inbox, &[subjects::NOTIFY_TEST_ALL]])),
                )
            }
            Self::Cli => (
                allow(&join(&[
                    JS_READ,
                    &[
                        subjects::ALERTS_ALL,
                        "$KV.sysmon_rules.>",
                        "$KV.sysmon_alert_state.>",
                        "$JS.API.STREAM.PURGE.*",
                        subjects::FORGET_ALL,
                        "$KV.sysmon_silences.>",
                        "$JS.API.STREAM.CREATE.KV_sysmon_silences",
                        subjects::NOTIFY_TEST_ALL,
                    ],
                ])),
                allow(&inbox),
            ),
            Self::CliReadOnly => (allow(JS_READ), allow(&inbox)),
            // The leaf user's permissions are the link's, seen from the
            // edge: publish = what the hub may send in, subscribe = what
            // the edge may send out (NATS-NOTES; schemas::streams).
            Self::Leaf => (
                Permission {
                    allow: streams::leaf_hub_to_edge(),
                    deny: Vec::new(),
                },
                Permission {
                    allow: streams::leaf_edge_to_hub(),
                    deny: Vec::new(),
                },
            ),
            Self::EdgeAdmin => (
                allow(&join(&[
                    EDGE_READ,
                    &["$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*"],
                ])),
                allow(&inbox),
            ),
            // Reading only: pull consumers (the gateway's ordered ones need
            // no flow control), message gets. No data subject, no stream
            // change, nothing towards the hub.
            Self::EdgeGateway => (allow(EDGE_READ), allow(&inbox)),
            Self::Loadgen => (
                allow(&[subjects::METRICS_LIVE, subjects::INFO_ALL]),
                allow(&inbox),
            ),
        }
    }
}

/// What the notifier may publish: its own consumer on ALERTS (made,
/// read, pulled from, acked), its two buckets and NOTIFICATIONS (made,
/// read; only the delivered bucket and failures written), the silences
/// watched. Nothing on ALERTS, the rules or the alert state.
fn notifier_publish() -> Vec<String> {
    let alerts = streams::ALERTS;
    let me = streams::NOTIFIER_CONSUMER;
    let sil = format!("KV_{}", streams::SILENCES_BUCKET);
    let sent = format!("KV_{}", streams::NOTIFIER_SENT_BUCKET);
    let notif = streams::NOTIFICATIONS;
    let mut v = vec![
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{alerts}"),
        format!("$JS.API.CONSUMER.CREATE.{alerts}.{me}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{alerts}.{me}"),
        format!("$JS.API.CONSUMER.INFO.{alerts}.{me}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{alerts}.{me}"),
        format!("$JS.ACK.{alerts}.{me}.>"),
        // The silences watch: an ordered consumer of its own.
        format!("$JS.API.CONSUMER.CREATE.{sil}"),
        format!("$JS.API.CONSUMER.CREATE.{sil}.>"),
        format!("$JS.API.CONSUMER.DELETE.{sil}.>"),
        format!("$JS.FC.{sil}.>"),
        // Delivered keys: read one, write one.
        format!("$JS.API.DIRECT.GET.{sent}.>"),
        format!("$JS.API.STREAM.MSG.GET.{sent}"),
        format!("$KV.{}.>", streams::NOTIFIER_SENT_BUCKET),
        subjects::NOTIFY_FAILED_ALL.replace("*.*", ">"),
    ];
    for s in [sil.as_str(), sent.as_str(), notif] {
        v.push(format!("$JS.API.STREAM.INFO.{s}"));
        v.push(format!("$JS.API.STREAM.CREATE.{s}"));
    }
    v
}

/// One user the authority issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub name: String,
    #[serde(flatten)]
    pub role: Role,
    pub public_key: String,
    /// Unix seconds.
    pub issued_at: i64,
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// A leaf URL as `leafnodes.remotes` takes it: a scheme nats-server dials
/// (`nats-leaf://`, `tls://`, `nats://`, `ws://`, `wss://`), then a host
/// and a port and nothing that could end the quoted string in the config.
pub fn check_leaf_url(url: &str) -> Result<(), CredsError> {
    let ok = ["nats-leaf://", "tls://", "nats://", "ws://", "wss://"]
        .iter()
        .find_map(|p| url.strip_prefix(p))
        .is_some_and(|rest| {
            !rest.is_empty()
                && rest.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_')
                })
        });
    if ok {
        Ok(())
    } else {
        Err(CredsError::BadUrl(url.to_owned()))
    }
}

/// The authority, loaded from its directory.
pub struct Authority {
    dir: PathBuf,
    domain: Domain,
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
    signing: KeyPair,
    issued: Vec<Issued>,
    partitions: streams::Partitions,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("dir", &self.dir)
            .field("domain", &self.domain)
            .field("account", &self.account.public_key())
            .finish_non_exhaustive()
    }
}

const SEEDS: [&str; 4] = ["operator.nk", "system.nk", "sysmon.nk", "sysmon-signing.nk"];
/// Holds `edge` in an edge authority's directory; absent for the hub's.
const DOMAIN_FILE: &str = "domain";
/// Holds the hub's METRICS partition count when it is not 1
/// (`sysmonstm creds partitions`); the account JWT maps subjects by it.
const PARTITIONS_FILE: &str = "metrics-partitions";

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn write_secret(path: &Path, text: &str) -> Result<(), CredsError> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(&tmp)
        .map_err(|e| CredsError::Io(tmp.clone(), e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| CredsError::Io(tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| CredsError::Io(path.to_owned(), e))
}

fn read(path: &Path) -> Result<String, CredsError> {
    std::fs::read_to_string(path).map_err(|e| CredsError::Io(path.to_owned(), e))
}

fn seed_of(kp: &KeyPair) -> Result<String, CredsError> {
    kp.seed()
        .map_err(|e| CredsError::Jwt(jwt::JwtError::Sign(e.to_string())))
}

impl Authority {
    /// Creates a new hub authority in `dir` (which must not hold one).
    pub fn init(dir: &Path) -> Result<Self, CredsError> {
        Self::init_for(dir, Domain::Hub)
    }

    /// Creates a new authority for `domain` in `dir`.
    pub fn init_for(dir: &Path, domain: Domain) -> Result<Self, CredsError> {
        if dir.join("operator.nk").exists() {
            return Err(CredsError::Exists(dir.to_owned()));
        }
        std::fs::create_dir_all(dir.join("users"))
            .map_err(|e| CredsError::Io(dir.to_owned(), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        if domain == Domain::Edge {
            write_secret(&dir.join(DOMAIN_FILE), "edge\n")?;
        }
        let me = Self {
            dir: dir.to_owned(),
            domain,
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            account: KeyPair::new_account(),
            signing: KeyPair::new_account(),
            issued: Vec::new(),
            partitions: streams::Partitions::ONE,
        };
        for (file, kp) in SEEDS
            .iter()
            .zip([&me.operator, &me.system, &me.account, &me.signing])
        {
            write_secret(&dir.join(file), &seed_of(kp)?)?;
        }
        me.save()?;
        Ok(me)
    }

    /// Opens the authority in `dir`.
    pub fn open(dir: &Path) -> Result<Self, CredsError> {
        if !dir.join("operator.nk").exists() {
            return Err(CredsError::Missing(dir.to_owned()));
        }
        let mut keys = Vec::new();
        for file in SEEDS {
            let p = dir.join(file);
            let kp = KeyPair::from_seed(read(&p)?.trim())
                .map_err(|e| CredsError::Damaged(p.clone(), e.to_string()))?;
            keys.push(kp);
        }
        let issued_path = dir.join("issued.json");
        let issued = if issued_path.exists() {
            serde_json::from_str(&read(&issued_path)?)
                .map_err(|e| CredsError::Damaged(issued_path, e.to_string()))?
        } else {
            Vec::new()
        };
        let mut k = keys.into_iter();
        let (Some(operator), Some(system), Some(account), Some(signing)) =
            (k.next(), k.next(), k.next(), k.next())
        else {
            return Err(CredsError::Damaged(dir.to_owned(), "missing keys".into()));
        };
        let domain = match std::fs::read_to_string(dir.join(DOMAIN_FILE)) {
            Ok(t) if t.trim() == "edge" => Domain::Edge,
            Ok(t) => {
                return Err(CredsError::Damaged(
                    dir.join(DOMAIN_FILE),
                    format!("unknown domain {:?}", t.trim()),
                ));
            }
            Err(_) => Domain::Hub,
        };
        let partitions_path = dir.join(PARTITIONS_FILE);
        let partitions = match std::fs::read_to_string(&partitions_path) {
            Ok(t) => t
                .trim()
                .parse::<u64>()
                .map_err(|e| e.to_string())
                .and_then(|n| streams::Partitions::new(n).map_err(|e| e.to_string()))
                .map_err(|e| CredsError::Damaged(partitions_path, e))?,
            Err(_) => streams::Partitions::ONE,
        };
        Ok(Self {
            dir: dir.to_owned(),
            domain,
            operator,
            system,
            account,
            signing,
            issued,
            partitions,
        })
    }

    /// Opens the authority in `dir`, creating it on first use.
    pub fn open_or_init(dir: &Path) -> Result<Self, CredsError> {
        if dir.join("operator.nk").exists() {
            Self::open(dir)
        } else {
            Self::init(dir)
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// How many partitions the account maps METRICS subjects into.
    pub fn partitions(&self) -> streams::Partitions {
        self.partitions
    }

    /// Maps METRICS subjects into `partitions` from now on: rewrites the
    /// account JWT in `resolver.conf` (a hub reload applies it). Every
    /// service reading METRICS must be given the same count. Only the hub's
    /// authority maps; an edge's refuses.
    pub fn set_partitions(&mut self, partitions: streams::Partitions) -> Result<(), CredsError> {
        if self.domain != Domain::Hub {
            return Err(CredsError::Damaged(
                self.dir.clone(),
                "METRICS partitions are the hub's: this is an edge authority".into(),
            ));
        }
        self.partitions = partitions;
        write_secret(
            &self.dir.join(PARTITIONS_FILE),
            &format!("{}\n", partitions.get()),
        )?;
        self.save()
    }

    /// The SYSMON account's public key (a leaf remote's `account`).
    pub fn account_public_key(&self) -> String {
        self.account.public_key()
    }

    pub fn issued(&self) -> &[Issued] {
        &self.issued
    }

    /// Where the `.creds` file of `name` is written.
    pub fn creds_path(&self, name: &str) -> PathBuf {
        self.dir.join("users").join(format!("{name}.creds"))
    }

    /// Issues (or issues again, with a new key) the user for `role` and
    /// writes its `.creds` file; returns its path.
    pub fn issue(&mut self, role: Role) -> Result<PathBuf, CredsError> {
        if let Role::Agent(m) = &role {
            MachineId::parse(m)
                .map_err(|e| CredsError::Damaged(PathBuf::from(m), e.to_string()))?;
        }
        if role.domain() != self.domain {
            return Err(CredsError::WrongDomain {
                role: role.name(),
                wants: role.domain(),
                is: self.domain,
                dir: self.dir.clone(),
            });
        }
        let name = role.name();
        let user = KeyPair::new_user();
        let (publish, subscribe) = role.permissions();
        let iat = now_s();
        let claims = Claims {
            jti: String::new(),
            iat,
            iss: String::new(),
            name: name.clone(),
            sub: user.public_key(),
            exp: None,
            nats: UserNats::new(publish, subscribe, self.account.public_key()),
        };
        let user_jwt = jwt::encode(claims, &self.signing)?;
        let path = self.creds_path(&name);
        write_secret(&path, &jwt::creds_file(&user_jwt, &seed_of(&user)?))?;
        self.issued
            .retain(|i| i.name != name || i.revoked_at.is_some());
        self.issued.push(Issued {
            name,
            role,
            public_key: user.public_key(),
            issued_at: iat,
            revoked_at: None,
        });
        self.save()?;
        Ok(path)
    }

    /// Revokes every user issued under `name`; servers refuse them after
    /// their next config reload.
    pub fn revoke(&mut self, name: &str) -> Result<usize, CredsError> {
        let now = now_s();
        let mut n = 0;
        for i in self
            .issued
            .iter_mut()
            .filter(|i| i.name == name && i.revoked_at.is_none())
        {
            i.revoked_at = Some(now);
            n += 1;
        }
        if n == 0 {
            return Err(CredsError::Unknown(name.to_owned()));
        }
        let _ = std::fs::remove_file(self.creds_path(name));
        self.save()?;
        Ok(n)
    }

    /// The `include` line for a server config anywhere on this machine.
    /// nats-server reads an include relative to the including file, never
    /// absolute, and cleans the joined path; `..` at the root stays at the
    /// root, so climbing further than any config can be deep, then down to
    /// the absolute path, names the same file from every directory.
    pub fn include_line(&self) -> String {
        let target = std::path::absolute(self.dir.join("resolver.conf"))
            .unwrap_or_else(|_| self.dir.join("resolver.conf"));
        let down: PathBuf = target
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        format!("include \"{}{}\"", "../".repeat(64), down.display())
    }

    /// The hub's side of the leaf link, for `include` in the hub's config:
    /// dial `url` (the edge's leaf-node listener), bind the link to this
    /// (hub) authority's SYSMON account, authenticate with `leaf_creds`
    /// (the edge authority's `leaf` user). The path is made absolute:
    /// nats-server reads it relative to its working directory.
    pub fn leaf_remote_conf(&self, url: &str, leaf_creds: &Path) -> Result<String, CredsError> {
        if self.domain != Domain::Hub {
            return Err(CredsError::WrongDomain {
                role: "leaf remote".into(),
                wants: Domain::Hub,
                is: self.domain,
                dir: self.dir.clone(),
            });
        }
        check_leaf_url(url)?;
        let creds = std::path::absolute(leaf_creds)
            .map_err(|e| CredsError::Io(leaf_creds.to_owned(), e))?;
        Ok(format!(
            "# The hub's leaf link to the edge: written by `sysmonstm creds leaf`.\n\
             leafnodes {{\n  remotes = [\n    {{\n      url: {url:?}\n      \
             account: {acc}\n      credentials: {creds:?}\n    }}\n  ]\n}}\n",
            acc = self.account.public_key(),
            creds = creds.display().to_string(),
        ))
    }

    /// Writes [`leaf_remote_conf`](Self::leaf_remote_conf) to
    /// `leaf-remote.conf` in this (hub) authority's directory.
    pub fn write_leaf_remote(&self, url: &str, leaf_creds: &Path) -> Result<PathBuf, CredsError> {
        let path = self.dir.join("leaf-remote.conf");
        write_secret(&path, &self.leaf_remote_conf(url, leaf_creds)?)?;
        Ok(path)
    }

    fn account_jwt(&self) -> Result<String, CredsError> {
        let revocations: BTreeMap<String, i64> = self
            .issued
            .iter()
            // A user is refused when issued at or before this time.
            .filter_map(|i| {
                i.revoked_at
                    .map(|at| (i.public_key.clone(), at.max(i.issued_at)))
            })
            .collect();
        let claims = Claims {
            jti: String::new(),
            iat: now_s(),
            iss: String::new(),
            name: self.domain.account_name().into(),
            sub: self.account.public_key(),
            exp: None,
            nats: AccountNats {
                kind: "account".into(),
                version: 2,
                limits: AccountLimits::open(true),
                signing_keys: vec![self.signing.public_key()],
                revocations,
                mappings: self
                    .partitions
                    .mapping()
                    .map(|(from, to)| {
                        BTreeMap::from([(
                            from,
                            vec![jwt::WeightedMapping {
                                subject: to,
                                weight: 100,
                            }],
                        )])
                    })
                    .unwrap_or_default(),
            },
        };
        Ok(jwt::encode(claims, &self.operator)?)
    }

    /// The server-side half: operator JWT, system account and the MEMORY
    /// resolver with both account JWTs, for `include` in a server config.
    ///
    /// The operator and system account JWTs are minted once and kept
    /// (`operator.jwt`, `system.jwt`): nats-server cannot reload a changed
    /// operator ("config reload not supported for TrustedOperators"), so a
    /// re-minted one — a new `iat` — would make the reload that applies a
    /// revocation fail.
    pub fn resolver_conf(&self) -> Result<String, CredsError> {
        let operator =
            self.kept_jwt("operator.jwt", &self.operator, || self.mint_operator_jwt())?;
        let system = self.kept_jwt("system.jwt", &self.system, || self.mint_system_jwt())?;
        Ok(format!(
            "# sysmonstm credentials: written by `sysmonstm creds`; do not edit.\n\
             operator: \"{operator}\"\n\
             system_account: {sys}\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: \"{system}\"\n  {acc}: \"{account}\"\n}}\n",
            sys = self.system.public_key(),
            acc = self.account.public_key(),
            account = self.account_jwt()?,
        ))
    }

    /// The JWT for `subject` kept in `file`, or a new one from `mint`, kept
    /// there.
    fn kept_jwt(
        &self,
        file: &str,
        subject: &KeyPair,
        mint: impl FnOnce() -> Result<String, CredsError>,
    ) -> Result<String, CredsError> {
        let path = self.dir.join(file);
        if path.exists() {
            let text = read(&path)?.trim().to_owned();
            let claims: Claims<serde_json::Value> =
                jwt::decode(&text).map_err(|e| CredsError::Damaged(path.clone(), e.to_string()))?;
            if claims.sub != subject.public_key() {
                return Err(CredsError::Damaged(
                    path,
                    "signed for another key than this directory's".into(),
                ));
            }
            return Ok(text);
        }
        let jwt = mint()?;
        write_secret(&path, &jwt)?;
        Ok(jwt)
    }

    fn mint_operator_jwt(&self) -> Result<String, CredsError> {
        Ok(jwt::encode(
            Claims {
                jti: String::new(),
                iat: now_s(),
                iss: String::new(),
                name: self.domain.operator_name().into(),
                sub: self.operator.public_key(),
                exp: None,
                nats: OperatorNats {
                    kind: "operator".into(),
                    version: 2,
                    signing_keys: Vec::new(),
                    system_account: self.system.public_key(),
                },
            },
            &self.operator,
        )?)
    }

    fn mint_system_jwt(&self) -> Result<String, CredsError> {
        Ok(jwt::encode(
            Claims {
                jti: String::new(),
                iat: now_s(),
                iss: String::new(),
                name: "SYS".into(),
                sub: self.system.public_key(),
                exp: None,
                nats: AccountNats {
                    kind: "account".into(),
                    version: 2,
                    limits: AccountLimits::open(false),
                    signing_keys: Vec::new(),
                    revocations: BTreeMap::new(),
                    mappings: BTreeMap::new(),
                },
            },
            &self.operator,
        )?)
    }

    fn save(&self) -> Result<(), CredsError> {
        let json = serde_json::to_string_pretty(&self.issued)
            .map_err(|e| CredsError::Damaged(self.dir.clone(), e.to_string()))?;
        write_secret(&self.dir.join("issued.json"), &json)?;
        write_secret(&self.dir.join("resolver.conf"), &self.resolver_conf()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_has_an_authority_of_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Authority::init(&dir.path().join("hub")).expect("hub");
        let mut edge = Authority::init_for(&dir.path().join("edge"), Domain::Edge).expect("edge");
        assert!(matches!(
            edge.issue(Role::Persister),
            Err(CredsError::WrongDomain { .. })
        ));
        let leaf = edge.issue(Role::Leaf).expect("leaf");
        edge.issue(Role::EdgeGateway).expect("edge gateway");
        let mut hub = hub;
        assert!(matches!(
            hub.issue(Role::EdgeGateway),
            Err(CredsError::WrongDomain { .. })
        ));
        let edge = Authority::open(&dir.path().join("edge")).expect("reopen");
        assert_eq!(edge.domain(), Domain::Edge);
        assert_eq!(edge.issued().len(), 2);
        let text = std::fs::read_to_string(&leaf).expect("creds");
        let claims: Claims<UserNats> =
            jwt::decode(text.lines().nth(1).expect("jwt")).expect("verifies");
        assert_eq!(claims.nats.publish.allow, streams::leaf_hub_to_edge());
        assert_eq!(claims.nats.subscribe.allow, streams::leaf_edge_to_hub());
        let remote = hub
            .leaf_remote_conf("nats-leaf://127.0.0.1:7422", &leaf)
            .expect("remote");
        assert!(remote.contains(&hub.account_public_key()), "{remote}");
        assert!(remote.contains("nats-leaf://127.0.0.1:7422"), "{remote}");
        assert!(edge.leaf_remote_conf("x", &leaf).is_err());
        for bad in [
            "",
            "127.0.0.1:7422",
            "nats-leaf://",
            "nats-leaf://a\"\ninclude \"/etc/x",
            "http://edge:7422",
        ] {
            assert!(
                matches!(hub.leaf_remote_conf(bad, &leaf), Err(CredsError::BadUrl(_))),
                "{bad:?}"
            );
        }
        hub.leaf_remote_conf("tls://edge.example.com:7422", &leaf)
            .expect("tls");
        hub.leaf_remote_conf("nats-leaf://[::1]:7422", &leaf)
            .expect("ipv6");
    }

    /// nats-server refuses to reload a changed operator, so a revocation
    /// (which rewrites resolver.conf) must leave the operator and system
    /// JWTs as they were, however much later it comes.
    #[test]
    fn a_revocation_changes_only_the_account_jwt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Authority::init(dir.path()).expect("init");
        a.issue(Role::Agent("web-1".into())).expect("agent");
        let before = std::fs::read_to_string(dir.path().join("resolver.conf")).expect("conf");
        // Wait for the clock's second to change: JWTs carry `iat` in seconds.
        let t0 = now_s();
        while now_s() == t0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut a = Authority::open(dir.path()).expect("reopen");
        a.revoke("agent-web-1").expect("revoked");
        let after = std::fs::read_to_string(dir.path().join("resolver.conf")).expect("conf");
        let line = |conf: &str, key: &str| {
            conf.lines()
                .find(|l| l.trim_start().starts_with(key))
                .map(str::to_owned)
                .expect(key)
        };
        assert_eq!(line(&before, "operator:"), line(&after, "operator:"));
        let sys = a.system.public_key();
        assert_eq!(
            line(&before, &format!("{sys}:")),
            line(&after, &format!("{sys}:"))
        );
        let acc = a.account_public_key();
        assert_ne!(
            line(&before, &acc),
            line(&after, &acc),
            "the revocation is in"
        );
        // A kept JWT that is not this directory's is refused, not served.
        std::fs::write(dir.path().join("operator.jwt"), "a.b.c").expect("write");
        assert!(matches!(a.resolver_conf(), Err(CredsError::Damaged(..))));
    }

    #[test]
    fn init_issue_revoke_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Authority::init(dir.path()).expect("init");
        assert!(matches!(
            Authority::init(dir.path()),
            Err(CredsError::Exists(_))
        ));
        let p = a.issue(Role::Agent("web-1".into())).expect("agent");
        let text = std::fs::read_to_string(&p).expect("creds");
        assert!(text.contains("BEGIN NATS USER JWT") && text.contains("BEGIN USER NKEY SEED"));
        let jwt_text = text.lines().nth(1).expect("jwt line");
        let claims: Claims<UserNats> = jwt::decode(jwt_text).expect("verifies");
        assert_eq!(
            claims.nats.publish.allow,
            [
                "sysmon.metrics.web-1",
                "sysmon.metrics.*.web-1",
                "sysmon.info.web-1"
            ]
        );
        assert_eq!(claims.nats.subscribe.allow, ["_INBOX_web-1.>"]);
        assert_eq!(claims.nats.issuer_account, a.account_public_key());
        assert!(
            a.issue(Role::Agent("Web 1".into())).is_err(),
            "invalid machine id"
        );
        a.issue(Role::Gateway).expect("gateway");

        let a = Authority::open(dir.path()).expect("reopen");
        assert_eq!(a.issued().len(), 2);
        let mut a = a;
        assert_eq!(a.revoke("agent-web-1").expect("revoked"), 1);
        assert!(matches!(
            a.revoke("agent-web-1"),
            Err(CredsError::Unknown(_))
        ));
        let conf = std::fs::read_to_string(dir.path().join("resolver.conf")).expect("conf");
        assert!(conf.contains("resolver: MEMORY") && !conf.contains("password"));
        let user_key = &a.issued()[0].public_key;
        let acc_line = conf
            .lines()
            .find(|l| l.trim_start().starts_with(&a.account_public_key()))
            .expect("account preload");
        let acc_jwt = acc_line.split('"').nth(1).expect("quoted jwt");
        let acc: Claims<AccountNats> = jwt::decode(acc_jwt).expect("account verifies");
        assert!(acc.nats.revocations.contains_key(user_key));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("sysmon.nk"))
                .expect("seed")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "seeds are private");
        }
    }
}
