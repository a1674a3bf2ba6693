//! pbft-client (under construction)
