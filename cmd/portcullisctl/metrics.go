package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/metrics"
)

func init() { register(newMetricsCommand) }

func newMetricsCommand(opts *options) *cobra.Command {
	var listen, textfile string
	cmd := &cobra.Command{
		Use:   "metrics --listen ADDR | --textfile PATH",
		Short: "Serve the counters in the Prometheus format, or write them once for node_exporter",
		Long: "--listen ADDR serves /metrics (read from the pinned maps at each scrape) until stopped.\n" +
			"--textfile PATH writes the same metrics once to PATH (must end in .prom), atomically, for\n" +
			"node_exporter's textfile collector. See docs/metrics.md.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (listen == "") == (textfile == "") {
				return errors.New("give exactly one of --listen ADDR or --textfile PATH")
			}
			reg := metrics.Registry(opts.stateDir)
			if textfile != "" {
				return metrics.WriteTextfile(reg, textfile)
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			mux := http.NewServeMux()
			mux.Handle("/metrics", metrics.Handler(reg))
			fmt.Fprintf(cmd.OutOrStdout(), "serving http://%s/metrics\n", ln.Addr())
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			return srv.Serve(ln)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "address to serve /metrics on, e.g. 127.0.0.1:9814")
	cmd.Flags().StringVar(&textfile, "textfile", "", "write the metrics once to this .prom file")
	return cmd
}
