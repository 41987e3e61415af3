package proxy

// RelayLoopSessions reports how many sessions the event loops relay now.
func RelayLoopSessions() int {
	loopPool.mu.Lock()
	defer loopPool.mu.Unlock()
	n := 0
	for _, l := range loopPool.loops {
		n += l.load()
	}
	return n
}
