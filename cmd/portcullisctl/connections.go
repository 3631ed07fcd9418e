package main

import (
	"fmt"
	"io"
	"sort"

	"github.com/portcullis-net/portcullis/pkg/limits"
)

// printConnections is status' table of connection counts: live against
// the total cap, and the busiest destination against the per-destination
// cap.
func printConnections(w io.Writer, opts *options, usage map[string]*limits.Usage) error {
	if len(usage) == 0 {
		return nil
	}
	var ids []string
	for id := range usage {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var rows [][]string
	for _, id := range ids {
		u := usage[id]
		busiest := "-"
		if len(u.Destinations) > 0 {
			d := u.Destinations[0]
			busiest = fmt.Sprintf("%s/%s %d/%s", d.Destination, d.Protocol, d.Count, capOf(u.PerDestination))
		}
		rows = append(rows, []string{id, fmt.Sprintf("%d/%s", u.Live, capOf(u.Total)), fmt.Sprint(len(u.Destinations)), busiest})
	}
	fmt.Fprintln(w)
	return render(w, opts, nil, []string{"ID", "CONNECTIONS", "DESTINATIONS", "BUSIEST DESTINATION"}, rows)
}

func capOf(n uint32) string {
	if n == 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}
