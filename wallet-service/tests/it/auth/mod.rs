//! Sign-in: the HS256 development mode with a shared secret (`secret`), and tokens of an
//! identity provider checked against its JWKS (`jwks`).

mod jwks;
mod secret;
