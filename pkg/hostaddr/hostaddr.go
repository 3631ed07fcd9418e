// Package hostaddr checks that addresses are configured in a network
// namespace, so a policy never pins a container to an address it cannot
// use.
package hostaddr

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// CheckLocal returns an error naming the first address that is not local
// in the network namespace at netnsPath ("" for the caller's). It asks the
// kernel directly: a socket bound to the address with port 0 succeeds only
// for a local address (and fails for a tentative IPv6 one, which cannot be
// used yet either).
func CheckLocal(netnsPath string, addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	check := func() error {
		for _, a := range addrs {
			if err := bindable(a); err != nil {
				where := "on this host"
				if netnsPath != "" {
					where = "in network namespace " + netnsPath
				}
				if errors.Is(err, unix.EADDRNOTAVAIL) {
					return fmt.Errorf("address %s is not configured %s (add it with: ip addr add %s dev IFACE)", a, where, a)
				}
				return fmt.Errorf("address %s %s: %w", a, where, err)
			}
		}
		return nil
	}
	if netnsPath == "" {
		return check()
	}
	return ns.WithNetNSPath(netnsPath, func(ns.NetNS) error { return check() })
}

func bindable(a netip.Addr) error {
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: a.As16()}
	if a.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Addr: a.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Bind(fd, sa)
}
