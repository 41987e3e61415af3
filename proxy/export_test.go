package proxy

// UseGoroutineRelay makes s relay authenticated sessions with two goroutines
// each, as it does where event loops are not available, so tests cover both.
func UseGoroutineRelay(s *Server) { s.noLoops = true }

// NopMetrics is the Metrics a Server uses when none is configured.
func NopMetrics() Metrics { return nopMetrics{} }
