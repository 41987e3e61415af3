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

// RelayQueueMax is the most an event loop's queue toward one socket may
// hold.
const RelayQueueMax = outBufMax

// RelayQueuePeak is the most any event loop's queue has held since
// ResetRelayQueuePeak.
func RelayQueuePeak() int64 { return queuePeak.Load() }

// ResetRelayQueuePeak starts a new RelayQueuePeak measurement.
func ResetRelayQueuePeak() { queuePeak.Store(0) }
