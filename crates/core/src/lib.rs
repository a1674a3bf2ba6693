//! pbft-core (under construction)
