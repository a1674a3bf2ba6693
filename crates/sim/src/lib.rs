//! pbft-sim (under construction)
