//go:build !linux

package proxy

// There are no event loops, so no queues, here.

const RelayQueueMax = 0

func RelayQueuePeak() int64 { return 0 }

func ResetRelayQueuePeak() {}
