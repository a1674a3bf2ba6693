//! pbft-node (under construction)
