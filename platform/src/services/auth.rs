//! The auth service: users, password hashes (argon2id, cost configurable,
//! a random salt per user), roles and JWTs.
//!
//! Registrations are facts in the USERS stream (message id = username, so a
//! duplicate registration is refused by the broker too); a user's id is the
//! stream sequence of their registration. On start the users are replayed.
//!
//! Hashing is costly on purpose, so it runs off the async workers and is
//! bounded ([`HashingLimits`]). Login costs one verification whether or not
//! the user exists (an unknown user's password is checked against a hash of
//! nothing), so its timing does not tell which usernames are registered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, Version};
use bytes::Bytes;
use prost::Message;
use tokio::sync::{Mutex, Semaphore};
use tonic::{Request, Response, Status};

use crate::bus::read_to_end;
use crate::config::{HashingLimits, PasswordHashing};
use crate::proto::auth::auth_server::{Auth, AuthServer};
use crate::proto::auth::{LoginReply, LoginRequest, RegisterReply, RegisterRequest, VerifyReply, VerifyRequest};
use crate::proto::common::Role;
use crate::proto::events::UserRegistered;
use crate::services::front::Front;
use crate::services::{
    bus_status, decode, ensure_streams, jwt, shown, Deps, ServiceError, ServiceKind, Shutdown, TaskGroup,
};
use crate::telemetry::{grpc_call, trace, Rpc};

/// The gRPC service this module serves, as its metrics name it.
const GRPC_SERVICE: &str = crate::services::ServiceKind::Auth.grpc_name();

#[derive(Clone, Debug)]
struct User {
    id: u64,
    hash: String,
    role: Role,
}

struct State {
    deps: Deps,
    users: Mutex<BTreeMap<String, User>>,
    hashing: HashPool,
    /// A hash of a password nobody has, under the current parameters: what
    /// Login verifies against when the user does not exist.
    no_user_hash: String,
}

/// Runs the auth service until `shutdown`.
pub async fn serve(deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    let addr = deps.cfg.addrs.auth;
    let mut front = Front::listen(ServiceKind::Auth, addr, shutdown).await;
    let Some(state) = front.rebuilding(rebuild(&deps)).await? else { return Ok(()) };
    tracing::info!(%addr, "auth serving");
    let service = AuthServer::new(AuthSvc { state }).max_decoding_message_size(crate::services::MESSAGE_BYTES_MAX);
    front.serve(service, TaskGroup::default()).await
}

/// The users, replayed from USERS.
async fn rebuild(deps: &Deps) -> Result<Arc<State>, ServiceError> {
    ensure_streams(deps).await?;
    let names = deps.cfg.names();
    let stream = names.users_stream();
    let mut users = BTreeMap::new();
    for m in read_to_end(deps.bus.as_ref(), &stream, "", 1).await? {
        let u: UserRegistered = decode(&stream, m.seq, &m.payload)?;
        let role = Role::try_from(u.role).unwrap_or(Role::Trader);
        users.entry(u.username).or_insert(User { id: m.seq, hash: u.password_hash, role });
    }
    tracing::info!(users = users.len(), "auth rebuilt from streams");
    let hashing = HashPool::new(deps.cfg.hashing_limits);
    let (params, salt) = (deps.cfg.password_hashing, new_salt(deps));
    let no_user_hash = hashing
        .run(move || hash_password(params, &salt, "no user has this password"))
        .await
        .map_err(|e| ServiceError::TaskEnded(e.message().to_string()))?;
    Ok(Arc::new(State { deps: deps.clone(), users: Mutex::new(users), hashing, no_user_hash }))
}

fn new_salt(deps: &Deps) -> [u8; SALT_BYTES] {
    let mut salt = [0u8; SALT_BYTES];
    deps.entropy.fill(&mut salt);
    salt
}

fn hasher(p: PasswordHashing) -> Argon2<'static> {
    let params = Params::new(p.memory_kib, p.iterations, p.lanes, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Bytes of random salt per password, stored in its PHC string.
pub const SALT_BYTES: usize = 16;

/// The PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) of `password`
/// under `salt`, which must be random and the user's own.
pub fn hash_password(p: PasswordHashing, salt: &[u8; SALT_BYTES], password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(salt).expect("16 bytes is a valid salt");
    hasher(p).hash_password(password.as_bytes(), &salt).expect("argon2 hashing succeeds").to_string()
}

/// Whether `password` is the one `hash` (a PHC string) was made of, under
/// the parameters the hash itself names.
pub fn verify_password(p: PasswordHashing, hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| hasher(p).verify_password(password.as_bytes(), &h).is_ok())
}

/// A username is 3 to this many bytes of a-z, 0-9, '_' and '-'.
pub const USERNAME_BYTES_MAX: usize = 32;
/// A password is this many bytes at least...
pub const PASSWORD_BYTES_MIN: usize = 8;
/// ...and at most this many (argon2 hashes any length; a bound keeps a
/// request's cost and size known).
pub const PASSWORD_BYTES_MAX: usize = 128;

fn check_username(name: &str) -> Result<(), Status> {
    let ok = (3..=USERNAME_BYTES_MAX).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("username: 3 to {USERNAME_BYTES_MAX} of a-z, 0-9, '_' and '-'")))
    }
}

/// Refuses a username or password longer than any valid one, before it is
/// looked up or hashed (what Login checks; Register checks more).
pub fn check_lengths(username: &str, password: &str) -> Result<(), Status> {
    if username.len() > USERNAME_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "username: at most {USERNAME_BYTES_MAX} bytes (got {})",
            username.len()
        )));
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "password: {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes (got {})",
            password.len()
        )));
    }
    Ok(())
}

/// Password hashing off the async workers: each hash runs on a blocking
/// thread (`spawn_blocking`; a plain task in simulation, where CPU work takes
/// no time), at most `concurrency` at once, with at most `queue` calls
/// waiting for a turn. A call that finds the queue full is refused with
/// RESOURCE_EXHAUSTED at once: a burst of logins costs the caller a retry,
/// never every other caller seconds of queueing.
struct HashPool {
    turns: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    queue_max: usize,
}

/// Counts one waiting call for as long as it waits (dropped when it gets a
/// turn, or when the call is abandoned).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HashPool {
    fn new(limits: HashingLimits) -> HashPool {
        HashPool {
            turns: Arc::new(Semaphore::new(limits.concurrency as usize)),
            waiting: Arc::default(),
            queue_max: limits.queue as usize,
        }
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
        let turn = match self.turns.clone().try_acquire_owned() {
            Ok(turn) => turn,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue_max {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(Status::resource_exhausted("password hashing is busy; retry shortly"));
                }
                let _waiting = Waiting(self.waiting.clone());
                self.turns.clone().acquire_owned().await.expect("the hashing semaphore is never closed")
            }
        };
        // The turn goes with the work: an abandoned call's hash still holds it
        // until it is done, so no more than `concurrency` ever run.
        #[allow(deprecated)] // madsim marks it so: in simulation it runs `work` as a task
        let done = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            work()
        });
        done.await.map_err(|e| Status::internal(format!("password hashing failed: {e}")))
    }
}

struct AuthSvc {
    state: Arc<State>,
}

#[tonic::async_trait]
impl Auth for AuthSvc {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Register", "auth.register");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let req = req.into_inner();
            check_lengths(&req.username, &req.password)?;
            check_username(&req.username)?;
            if req.password.len() < PASSWORD_BYTES_MIN {
                return Err(Status::invalid_argument(format!(
                    "password: {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes (got {})",
                    req.password.len()
                )));
            }
            let role = match Role::try_from(req.role) {
                Ok(Role::Unspecified) | Ok(Role::Trader) => Role::Trader,
                Ok(Role::MarketMaker) => Role::MarketMaker,
                Ok(Role::Admin) => return Err(Status::permission_denied("role: admins are not self-registered")),
                Err(_) => return Err(Status::invalid_argument(format!("role: unknown role {}", req.role))),
            };
            let taken = || Status::already_exists(format!("username {} is taken", shown(&req.username)));
            if self.state.users.lock().await.contains_key(&req.username) {
                return Err(taken());
            }
            // Hashed without holding the users lock: registrations hash in parallel.
            let cfg = &self.state.deps.cfg;
            let (params, salt, password) = (cfg.password_hashing, new_salt(&self.state.deps), req.password.clone());
            let hash = self.state.hashing.run(move || hash_password(params, &salt, &password)).await?;
            let mut users = self.state.users.lock().await;
            if users.contains_key(&req.username) {
                return Err(taken());
            }
            let event =
                UserRegistered { username: req.username.clone(), password_hash: hash.clone(), role: role as i32 };
            let ack = self
                .state
                .deps
                .bus
                .publish(&cfg.names().users(), &format!("user-{}", req.username), Bytes::from(event.encode_to_vec()))
                .await
                .map_err(bus_status)?;
            if ack.duplicate {
                return Err(taken());
            }
            users.insert(req.username, User { id: ack.seq, hash, role });
            Ok(Response::new(RegisterReply { user_id: ack.seq }))
        })
        .await
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Login", "auth.login");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let req = req.into_inner();
            check_lengths(&req.username, &req.password)?;
            let cfg = &self.state.deps.cfg;
            let user = self.state.users.lock().await.get(&req.username).cloned();
            // One verification either way, so an unknown user costs what a wrong password does.
            let hash = user.as_ref().map_or_else(|| self.state.no_user_hash.clone(), |u| u.hash.clone());
            let (params, password) = (cfg.password_hashing, req.password);
            let verified = self.state.hashing.run(move || verify_password(params, &hash, &password)).await?;
            let user = match user {
                Some(u) if verified => u,
                _ => return Err(Status::unauthenticated("invalid username or password")),
            };
            let exp =
                self.state.deps.clock.now_ms() / 1000 + i64::try_from(cfg.jwt_ttl.as_secs()).unwrap_or(i64::MAX / 2);
            let token = jwt::issue(&cfg.jwt_secret, &jwt::Claims { sub: user.id, role: user.role as i32, exp });
            Ok(Response::new(LoginReply { token, user_id: user.id, role: user.role as i32 }))
        })
        .await
    }

    async fn verify(&self, req: Request<VerifyRequest>) -> Result<Response<VerifyReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Verify", "auth.verify");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let cfg = &self.state.deps.cfg;
            let claims = jwt::verify(&cfg.jwt_secret, &req.into_inner().token, self.state.deps.clock.now_ms() / 1000)
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            Ok(Response::new(VerifyReply { user_id: claims.sub, role: claims.role }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededEntropy;
    use crate::services::Entropy;

    fn salt_of(phc: &str) -> &str {
        phc.split('$').nth(4).expect("a PHC string: $argon2id$v$params$salt$hash")
    }

    #[test]
    fn each_hash_has_its_own_salt_and_verifies() {
        let entropy = SeededEntropy::new(1);
        let (mut s1, mut s2) = ([0u8; SALT_BYTES], [0u8; SALT_BYTES]);
        entropy.fill(&mut s1);
        entropy.fill(&mut s2);
        let p = PasswordHashing::CHEAP;
        let (a, b) = (hash_password(p, &s1, "same password"), hash_password(p, &s2, "same password"));
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert_ne!(salt_of(&a), salt_of(&b), "a salt per hash");
        assert_ne!(a, b);
        assert!(verify_password(p, &a, "same password") && verify_password(p, &b, "same password"));
        assert!(!verify_password(p, &a, "another password"));
        assert!(!verify_password(p, "not a PHC string", "same password"));
    }

    #[test]
    fn over_long_names_and_passwords_are_refused_before_use() {
        assert!(check_lengths(&"u".repeat(USERNAME_BYTES_MAX), &"p".repeat(PASSWORD_BYTES_MAX)).is_ok());
        let long_name = check_lengths(&"u".repeat(100_000), "password").unwrap_err();
        assert_eq!(long_name.code(), tonic::Code::InvalidArgument);
        assert_eq!(long_name.message(), "username: at most 32 bytes (got 100000)");
        let long_password = check_lengths("user", &"p".repeat(PASSWORD_BYTES_MAX + 1)).unwrap_err();
        assert_eq!(long_password.code(), tonic::Code::InvalidArgument);
    }

    /// Real threads only: in simulation a hash is a task that takes no time,
    /// and a blocking wait would stop the world.
    #[cfg(not(madsim))]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_is_bounded_and_a_full_queue_is_refused_at_once() {
        use std::time::Duration;
        let pool = Arc::new(HashPool::new(HashingLimits { concurrency: 1, queue: 1 }));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || held.recv().is_ok()).await }
        });
        while pool.turns.available_permits() > 0 {
            crate::time::sleep(Duration::from_millis(1)).await;
        }
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(|| 2).await }
        });
        while pool.waiting.load(Ordering::Relaxed) == 0 {
            crate::time::sleep(Duration::from_millis(1)).await;
        }
        let refused = pool.run(|| 3).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        release.send(()).unwrap();
        assert!(busy.await.unwrap().unwrap(), "the busy hash ran to its end");
        assert_eq!(queued.await.unwrap().unwrap(), 2, "the queued call ran once a turn was free");
        assert_eq!(pool.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(pool.run(|| 4).await.unwrap(), 4);
    }
}
