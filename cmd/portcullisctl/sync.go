package main

import (
	"context"
	"fmt"
	"log"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/multihost"
	"github.com/portcullis-net/portcullis/pkg/services"
)

func init() { register(newSyncCommand) }

func newSyncCommand(opts *options) *cobra.Command {
	var (
		endpoints, node, prefix string
		ttl, interval           time.Duration
	)
	cmd := &cobra.Command{
		Use:   "sync --etcd ENDPOINTS --node NAME [--prefix /portcullis] [--ttl 5s]",
		Short: "Share live service backends and service declarations with other hosts through etcd (runs until stopped)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if endpoints == "" {
				return fmt.Errorf("--etcd is required: the etcd client URLs, comma separated (http://10.0.0.1:2379,...)")
			}
			if err := services.ValidateNode(node); err != nil {
				return fmt.Errorf("--node: %w", err)
			}
			if !strings.HasPrefix(prefix, "/") {
				return fmt.Errorf("--prefix %q: must start with /", prefix)
			}
			if interval <= 0 {
				return fmt.Errorf("--interval %s: must be positive", interval)
			}
			logger := log.New(cmd.ErrOrStderr(), "sync: ", log.LstdFlags|log.Lmicroseconds)
			src, err := multihost.NewEtcd(strings.Split(endpoints, ","), prefix, node, ttl, logger)
			if err != nil {
				return err
			}
			defer src.Close()
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			logger.Printf("node %s: state %s, etcd %s, prefix %s, ttl %s", node, opts.stateDir, endpoints, prefix, ttl)
			y := &multihost.Syncer{StateDir: opts.stateDir, Node: node, Source: src, Interval: interval, Reconcile: 5 * time.Second, Log: logger}
			return y.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&endpoints, "etcd", "", "etcd client URLs, comma separated")
	cmd.Flags().StringVar(&node, "node", "", "this host's name, unique among the hosts")
	cmd.Flags().StringVar(&prefix, "prefix", "/portcullis", "etcd key prefix shared by the hosts")
	cmd.Flags().DurationVar(&ttl, "ttl", 5*time.Second, "lease TTL: how long a dead host's backends outlive it")
	cmd.Flags().DurationVar(&interval, "interval", 200*time.Millisecond, "how often the local port registry is read")
	return cmd
}
