//! pbft-net (under construction)
