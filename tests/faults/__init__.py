"""Fault injection: runs that kill, stall and rebalance replication, and check every backup."""
