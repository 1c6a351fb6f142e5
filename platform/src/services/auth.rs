//! The auth service: users, password hashes (argon2id, cost configurable),
//! roles and JWTs.
//!
//! Registrations are facts in the USERS stream (message id = username, so a
//! duplicate registration is refused by the broker too); a user's id is the
//! stream sequence of their registration. On start the users are replayed.

use std::collections::BTreeMap;
use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, Version};
use bytes::Bytes;
use prost::Message;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::bus::read_to_end;
use crate::config::PasswordHashing;
use crate::proto::auth::auth_server::{Auth, AuthServer};
use crate::proto::auth::{LoginReply, LoginRequest, RegisterReply, RegisterRequest, VerifyReply, VerifyRequest};
use crate::proto::common::Role;
use crate::proto::events::UserRegistered;
use crate::services::{bus_status, decode, ensure_streams, jwt, Deps, ServiceError, Shutdown};

#[derive(Clone, Debug)]
struct User {
    id: u64,
    hash: String,
    role: Role,
}

struct State {
    deps: Deps,
    users: Mutex<BTreeMap<String, User>>,
}

/// Runs the auth service until `shutdown`.
pub async fn serve(deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    ensure_streams(&deps).await?;
    let names = deps.cfg.names();
    let stream = names.users_stream();
    let mut users = BTreeMap::new();
    for m in read_to_end(deps.bus.as_ref(), &stream, "", 1).await? {
        let u: UserRegistered = decode(&stream, m.seq, &m.payload)?;
        let role = Role::try_from(u.role).unwrap_or(Role::Trader);
        users.entry(u.username).or_insert(User { id: m.seq, hash: u.password_hash, role });
    }
    tracing::info!(users = users.len(), "auth rebuilt from streams");
    let state = Arc::new(State { deps: deps.clone(), users: Mutex::new(users) });
    let addr = deps.cfg.addrs.auth;
    tracing::info!(%addr, "auth serving");
    crate::services::grpc_server()
        .add_service(AuthServer::new(AuthSvc { state }))
        .serve_with_shutdown(addr, shutdown)
        .await
        .map_err(|e| ServiceError::Serve { addr: addr.to_string(), reason: e.to_string() })
}

fn hasher(p: PasswordHashing) -> Argon2<'static> {
    let params = Params::new(p.memory_kib, p.iterations, p.lanes, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A salt derived from the username and the deployment's secret: unique per
/// user and deployment, and needs no OS randomness (which the simulation forbids).
fn salt(secret: &str, username: &str) -> [u8; 16] {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(secret).chain_update([0u8]).chain_update(username).finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// The PHC string of `password`.
pub fn hash_password(p: PasswordHashing, secret: &str, username: &str, password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&salt(secret, username)).expect("16 bytes is a valid salt");
    hasher(p).hash_password(password.as_bytes(), &salt).expect("argon2 hashing succeeds").to_string()
}

fn verify_password(p: PasswordHashing, hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| hasher(p).verify_password(password.as_bytes(), &h).is_ok())
}

fn check_username(name: &str) -> Result<(), Status> {
    let ok = (3..=32).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument("username: 3 to 32 of a-z, 0-9, '_' and '-'"))
    }
}

struct AuthSvc {
    state: Arc<State>,
}

#[tonic::async_trait]
impl Auth for AuthSvc {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterReply>, Status> {
        self.state.deps.work("auth.register").await;
        let req = req.into_inner();
        check_username(&req.username)?;
        if req.password.len() < 8 || req.password.len() > 128 {
            return Err(Status::invalid_argument("password: 8 to 128 characters"));
        }
        let role = match Role::try_from(req.role) {
            Ok(Role::Unspecified) | Ok(Role::Trader) => Role::Trader,
            Ok(Role::MarketMaker) => Role::MarketMaker,
            Ok(Role::Admin) => return Err(Status::permission_denied("role: admins are not self-registered")),
            Err(_) => return Err(Status::invalid_argument(format!("role: unknown role {}", req.role))),
        };
        let cfg = &self.state.deps.cfg;
        let mut users = self.state.users.lock().await;
        if users.contains_key(&req.username) {
            return Err(Status::already_exists(format!("username {:?} is taken", req.username)));
        }
        let hash = hash_password(cfg.password_hashing, &cfg.jwt_secret, &req.username, &req.password);
        let event = UserRegistered { username: req.username.clone(), password_hash: hash.clone(), role: role as i32 };
        let ack = self
            .state
            .deps
            .bus
            .publish(&cfg.names().users(), &format!("user-{}", req.username), Bytes::from(event.encode_to_vec()))
            .await
            .map_err(bus_status)?;
        if ack.duplicate {
            return Err(Status::already_exists(format!("username {:?} is taken", req.username)));
        }
        users.insert(req.username, User { id: ack.seq, hash, role });
        Ok(Response::new(RegisterReply { user_id: ack.seq }))
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        self.state.deps.work("auth.login").await;
        let req = req.into_inner();
        let cfg = &self.state.deps.cfg;
        let user = self.state.users.lock().await.get(&req.username).cloned();
        let user = match user {
            Some(u) if verify_password(cfg.password_hashing, &u.hash, &req.password) => u,
            _ => return Err(Status::unauthenticated("invalid username or password")),
        };
        let exp = self.state.deps.clock.now_ms() / 1000 + i64::try_from(cfg.jwt_ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let token = jwt::issue(&cfg.jwt_secret, &jwt::Claims { sub: user.id, role: user.role as i32, exp });
        Ok(Response::new(LoginReply { token, user_id: user.id, role: user.role as i32 }))
    }

    async fn verify(&self, req: Request<VerifyRequest>) -> Result<Response<VerifyReply>, Status> {
        self.state.deps.work("auth.verify").await;
        let cfg = &self.state.deps.cfg;
        let claims = jwt::verify(&cfg.jwt_secret, &req.into_inner().token, self.state.deps.clock.now_ms() / 1000)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(Response::new(VerifyReply { user_id: claims.sub, role: claims.role }))
    }
}
