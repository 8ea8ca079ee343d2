package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// relay serves the WebSocket route: it checks each request, dials Deepgram
// with the key it holds and runs one session per client.
type relay struct {
	// tools are what its sessions share of it: the config, the logger,
	// the metrics, the policy, the scrubber and the text budget.
	tools
	// admissions are the places requests take: the live sessions, the
	// per-user limits here and in Redis, the leases.
	admissions
	agent    upstream
	listen   upstream
	dialOpts websocket.DialOptions
	auth     *authenticator
	origins  *originChecker
	// identityHashKey keys identityKey, the identity's name in Redis and at Deepgram.
	identityHashKey []byte
	watchdog        watchdog
	// tryPage is the try-it page's responses by route (nil: TRY_PAGE off).
	tryPage map[string]tryAsset
	// dialTimeout is upstreamDialTimeout; tests shorten it.
	dialTimeout time.Duration
	// refused remembers recent refusals, so that their repeats are
	// answered before the upgrade (refusals.go).
	refused *refusalMemory
	// beforeLogged remembers the addresses whose answer before the upgrade
	// was logged (a refused origin), so that repeats within the window are
	// counted, not logged; apart from refused, so that a flood of them
	// cannot push out others' refusals.
	beforeLogged *refusalMemory
	// credentialFloods bounds the failing credentials an address is told
	// of in band (refusals.go).
	credentialFloods *credentialFloods
	// agentOutage and listenOutage hold dials while Deepgram's endpoint
	// is known to be down (outage.go).
	agentOutage, listenOutage *outage
	// draining is set by the first shutdown signal: new upgrades get 503.
	draining atomic.Bool
	// dials ends at the drain deadline (endDials), cutting short the dials
	// still in flight: their clients get 503 rather than a process that
	// exits under them.
	dials    context.Context
	endDials context.CancelFunc
	// stop ends the watchdog, the lease renewals and the JWKS refresher;
	// stopped says the watchdog ended, background the renewals.
	stop       context.CancelFunc
	stopped    chan struct{}
	background sync.WaitGroup
	// closing starts close's work once; closed says it is done.
	closing sync.Once
	closed  chan struct{}
}
