package state

import (
	"github.com/portcullis-net/portcullis/pkg/isolation"
)

// claimAddresses makes the attachment an owner of its policy's addresses
// in its network namespace, so no other container can bind them or send
// from them (bpf/isolation.h). It sets a.NetNSCookie.
func (s *State) claimAddresses(a *Attachment) (undo func(), err error) {
	if len(a.Policy.Addresses) == 0 {
		return func() {}, nil
	}
	path := a.NetNS
	if path == "" {
		path = "/proc/self/ns/net"
	}
	cookie, err := NetNSCookie(path)
	if err != nil {
		return nil, err
	}
	owners, err := isolation.OpenOwners(s.dir)
	if err != nil {
		return nil, err
	}
	defer owners.Close()
	if err := owners.Claim(cookie, a.Policy.Addresses); err != nil {
		return nil, err
	}
	a.NetNSCookie = cookie
	return func() { s.releaseAddresses(a) }, nil
}

// releaseAddresses drops what claimAddresses recorded. It never fails, so
// a detach goes on when the namespace is already gone.
func (s *State) releaseAddresses(a *Attachment) {
	if len(a.Policy.Addresses) == 0 || a.NetNSCookie == 0 {
		return
	}
	owners, err := isolation.OpenOwners(s.dir)
	if err != nil {
		return
	}
	defer owners.Close()
	owners.Release(a.NetNSCookie, a.Policy.Addresses)
}
