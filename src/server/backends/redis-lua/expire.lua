-- Age and total-size eviction of history, run now and then by every node.
maybe_expire(now_ms())
return 1
