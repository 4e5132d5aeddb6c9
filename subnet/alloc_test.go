package subnet_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/weft-net/weft/subnet"
)

func TestNextSubnet(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.5.1.0/24", "10.5.2.0/24"},
		{"10.5.255.0/24", "10.6.0.0/24"},
		{"10.255.255.0/24", "11.0.0.0/24"},
		{"10.5.4.0/25", "10.5.4.128/25"},
		{"10.5.4.128/25", "10.5.5.0/25"},
		{"10.5.4.252/30", "10.5.5.0/30"},
		{"10.5.0.0/16", "10.6.0.0/16"},
		{"10.0.0.0/8", "11.0.0.0/8"},
		{"10.5.4.7/32", "10.5.4.8/32"},
		{"255.255.255.0/24", "0.0.0.0/24"}, // wraps at the end of the address space
		{"255.255.255.255/32", "0.0.0.0/32"},
		{"fd00:5:0:34::/64", "fd00:5:0:35::/64"},
		{"fd00:5:0:ffff::/64", "fd00:5:1::/64"},
		{"fd00:5::/126", "fd00:5::4/126"},
		{"fd00:5::8000:0:0:0/65", "fd00:5:0:1::/65"},
		{"ffff:ffff:ffff:ffff::/64", "::/64"},
	}
	for _, tt := range tests {
		if got := subnet.NextSubnet(pfx(tt.in)); got != pfx(tt.want) {
			t.Errorf("NextSubnet(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestLastSubnet(t *testing.T) {
	tests := []struct {
		network string
		bits    int
		want    string
	}{
		{"10.5.0.0/16", 24, "10.5.255.0/24"},
		{"10.5.0.0/16", 26, "10.5.255.192/26"},
		{"10.5.0.0/16", 30, "10.5.255.252/30"},
		{"10.5.0.0/16", 16, "10.5.0.0/16"},
		{"10.5.4.0/22", 24, "10.5.7.0/24"},
		{"10.5.4.0/23", 25, "10.5.5.128/25"},
		{"10.5.4.0/28", 30, "10.5.4.12/30"},
		{"10.5.77.9/16", 24, "10.5.255.0/24"}, // host bits of the network are ignored
		{"0.0.0.0/0", 24, "255.255.255.0/24"},
		{"fd00:5::/48", 64, "fd00:5:0:ffff::/64"},
		{"fd00:5::/62", 64, "fd00:5:0:3::/64"},
		{"fd00:5::/124", 126, "fd00:5::c/126"},
	}
	for _, tt := range tests {
		if got := subnet.LastSubnet(pfx(tt.network), tt.bits); got != pfx(tt.want) {
			t.Errorf("LastSubnet(%s, %d) = %s, want %s", tt.network, tt.bits, got, tt.want)
		}
	}
}

func TestFirstAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.5.72.0/24", "10.5.72.1/24"},
		{"10.5.72.0/26", "10.5.72.1/26"},
		{"10.5.4.128/25", "10.5.4.129/25"},
		{"10.5.72.1/24", "10.5.72.1/24"},   // already the first address: from the masked prefix
		{"10.5.72.200/24", "10.5.72.1/24"}, // any host address
		{"fd00:5:0:34::/64", "fd00:5:0:34::1/64"},
	}
	for _, tt := range tests {
		if got := subnet.FirstAddr(pfx(tt.in)); got != pfx(tt.want) {
			t.Errorf("FirstAddr(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// prefixes parses a space-separated list of prefixes.
func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, pfx(s))
	}
	return out
}

func takenSet(ss ...string) map[netip.Prefix]bool {
	m := map[netip.Prefix]bool{}
	for _, s := range ss {
		m[pfx(s)] = true
	}
	return m
}

func TestFreeSubnets(t *testing.T) {
	tests := []struct {
		name   string
		bits   int
		lo, hi string
		taken  map[netip.Prefix]bool
		limit  int
		want   []netip.Prefix
	}{
		{"all free", 24, "10.5.1.0", "10.5.4.0", nil, 100,
			prefixes("10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24", "10.5.4.0/24")},
		{"both ends inclusive", 24, "10.5.1.0", "10.5.1.0", nil, 100, prefixes("10.5.1.0/24")},
		{"hi below lo: none", 24, "10.5.2.0", "10.5.1.0", nil, 100, nil},
		{"taken are skipped", 24, "10.5.1.0", "10.5.6.0", takenSet("10.5.1.0/24", "10.5.3.0/24", "10.5.6.0/24"), 100,
			prefixes("10.5.2.0/24", "10.5.4.0/24", "10.5.5.0/24")},
		{"a false entry is not taken", 24, "10.5.1.0", "10.5.2.0", map[netip.Prefix]bool{pfx("10.5.1.0/24"): false}, 100,
			prefixes("10.5.1.0/24", "10.5.2.0/24")},
		{"all taken", 24, "10.5.1.0", "10.5.3.0", takenSet("10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24"), 100, nil},
		{"taken outside the range are irrelevant", 24, "10.5.1.0", "10.5.2.0", takenSet("10.5.0.0/24", "10.5.3.0/24", "10.6.1.0/24"), 100,
			prefixes("10.5.1.0/24", "10.5.2.0/24")},
		{"limit", 24, "10.5.1.0", "10.5.255.0", takenSet("10.5.2.0/24"), 3,
			prefixes("10.5.1.0/24", "10.5.3.0/24", "10.5.4.0/24")},
		{"limit 0", 24, "10.5.1.0", "10.5.255.0", nil, 0, nil},
		{"/30 steps", 30, "10.5.4.4", "10.5.4.12", takenSet("10.5.4.8/30"), 100,
			prefixes("10.5.4.4/30", "10.5.4.12/30")},
		{"crossing an octet", 25, "10.5.4.128", "10.5.5.128", nil, 100,
			prefixes("10.5.4.128/25", "10.5.5.0/25", "10.5.5.128/25")},
		{"ends at the last subnet of the address space", 24, "255.255.254.0", "255.255.255.0", nil, 100,
			prefixes("255.255.254.0/24", "255.255.255.0/24")},
		{"wrap at 255.255.255.0/24 stops", 24, "255.255.255.0", "255.255.255.0", nil, 100,
			prefixes("255.255.255.0/24")},
		{"IPv6", 64, "fd00:5:0:1::", "fd00:5:0:4::", takenSet("fd00:5:0:2::/64"), 100,
			prefixes("fd00:5:0:1::/64", "fd00:5:0:3::/64", "fd00:5:0:4::/64")},
		{"IPv6 wrap stops", 64, "ffff:ffff:ffff:ffff::", "ffff:ffff:ffff:ffff::", nil, 100,
			prefixes("ffff:ffff:ffff:ffff::/64")},

		// A taken prefix of another length blocks every subnet it overlaps, as in flannel: leases made
		// under an earlier SubnetLen, and reservations.
		{"a wider lease blocks the subnets inside it", 26, "10.5.0.64", "10.5.2.0", takenSet("10.5.1.0/24"), 100,
			prefixes("10.5.0.64/26", "10.5.0.128/26", "10.5.0.192/26", "10.5.2.0/26")},
		{"a narrower lease blocks the subnet around it", 24, "10.5.1.0", "10.5.4.0", takenSet("10.5.2.64/26", "10.5.4.252/30"), 100,
			prefixes("10.5.1.0/24", "10.5.3.0/24")},
		{"an unmasked lease blocks its subnet", 24, "10.5.1.0", "10.5.3.0", takenSet("10.5.2.1/24"), 100,
			prefixes("10.5.1.0/24", "10.5.3.0/24")},
		{"a /16 reservation", 24, "10.5.254.0", "10.6.1.0", takenSet("10.6.0.0/16"), 100,
			prefixes("10.5.254.0/24", "10.5.255.0/24")},
		{"the other family is ignored", 24, "10.5.1.0", "10.5.2.0", takenSet("fd00:5:0:1::/64", "::/0"), 100,
			prefixes("10.5.1.0/24", "10.5.2.0/24")},
		{"IPv6 wider lease", 64, "fd00:5:0:1::", "fd00:5:0:4::", takenSet("fd00:5:0:2::/63"), 100,
			prefixes("fd00:5:0:1::/64", "fd00:5:0:4::/64")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := subnet.FreeSubnets(tt.bits, addr(tt.lo), addr(tt.hi), tt.taken, tt.limit)
			if !slices.Equal(got, tt.want) {
				t.Errorf("FreeSubnets(%d, %s, %s, %v, %d) =\n %v\nwant\n %v", tt.bits, tt.lo, tt.hi, tt.taken, tt.limit, got, tt.want)
			}
		})
	}
}

func TestFreeSubnetsLargeNetwork(t *testing.T) {
	// A /8 of /24s with the first 60000 taken: the 100 free ones are found without quadratic work.
	taken := map[netip.Prefix]bool{}
	p := pfx("10.0.1.0/24")
	for range 60000 {
		taken[p] = true
		p = subnet.NextSubnet(p)
	}
	got := subnet.FreeSubnets(24, addr("10.0.1.0"), addr("10.255.255.0"), taken, 100)
	if len(got) != 100 || got[0] != p || got[99] != pfx(fmt.Sprintf("10.%d.%d.0/24", (60001+99)/256, (60001+99)%256)) {
		t.Errorf("FreeSubnets: %d subnets, first %v, last %v; want 100 from %v", len(got), got[0], got[len(got)-1], p)
	}
}

func mustConfig(t testing.TB, js string) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func leases(ss ...string) []subnet.Lease {
	var out []subnet.Lease
	for _, s := range ss {
		out = append(out, subnet.Lease{Subnet: pfx(s)})
	}
	return out
}

func TestPickFree(t *testing.T) {
	// A /28 network of /30s: SubnetMin 10.5.4.4, SubnetMax 10.5.4.12, three subnets.
	c := mustConfig(t, `{"Network":"10.5.4.0/28"}`)
	tests := []struct {
		name   string
		leases []subnet.Lease
		want   []netip.Prefix // the possible choices; nil means none free
	}{
		{"empty", nil, prefixes("10.5.4.4/30", "10.5.4.8/30", "10.5.4.12/30")},
		{"one taken", leases("10.5.4.8/30"), prefixes("10.5.4.4/30", "10.5.4.12/30")},
		{"one left", leases("10.5.4.4/30", "10.5.4.12/30"), prefixes("10.5.4.8/30")},
		{"network address subnet taken (outside SubnetMin) does not matter", leases("10.5.4.0/30", "10.5.4.4/30", "10.5.4.12/30"), prefixes("10.5.4.8/30")},
		{"full", leases("10.5.4.4/30", "10.5.4.8/30", "10.5.4.12/30"), nil},
		{"full by a wider lease", leases("10.5.4.4/30", "10.5.4.8/29"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := map[netip.Prefix]bool{}
			for range 200 {
				got, ok := subnet.PickFree(c, tt.leases, false)
				if ok != (tt.want != nil) {
					t.Fatalf("PickFree = %v, %v; want ok %v", got, ok, tt.want != nil)
				}
				if !ok {
					if got.IsValid() {
						t.Errorf("PickFree returned %v with false", got)
					}
					return
				}
				if !slices.Contains(tt.want, got) {
					t.Fatalf("PickFree = %v, want one of %v", got, tt.want)
				}
				seen[got] = true
			}
			if len(seen) != len(tt.want) { // 200 draws among at most 3: all seen unless badly skewed
				t.Errorf("PickFree chose only %v of %v", seen, tt.want)
			}
		})
	}
}

// TestPickFreeAmongFirst100 checks the random choice is made among the first 100 free subnets (flannel's
// rule) and is spread over them.
func TestPickFreeAmongFirst100(t *testing.T) {
	c := mustConfig(t, `{"Network":"10.0.0.0/8"}`)
	var ls []subnet.Lease
	for i := 1; i <= 255; i += 2 { // every other subnet of 10.0.0.0/16 is taken
		ls = append(ls, subnet.Lease{Subnet: pfx(fmt.Sprintf("10.0.%d.0/24", i))})
	}
	taken := map[netip.Prefix]bool{}
	for _, l := range ls {
		taken[l.Subnet] = true
	}
	first100 := subnet.FreeSubnets(24, c.SubnetMin, c.SubnetMax, taken, 100)
	if len(first100) != 100 {
		t.Fatalf("FreeSubnets: %d", len(first100))
	}
	seen := map[netip.Prefix]int{}
	for range 2000 {
		got, ok := subnet.PickFree(c, ls, false)
		if !ok {
			t.Fatal("PickFree: none free")
		}
		if taken[got] {
			t.Fatalf("PickFree returned taken %v", got)
		}
		if !slices.Contains(first100, got) {
			t.Fatalf("PickFree = %v, not among the first 100 free", got)
		}
		seen[got]++
	}
	if len(seen) < 90 { // 2000 draws over 100: even one unseen has a probability of about 2e-7
		t.Errorf("PickFree chose only %d distinct subnets of 100", len(seen))
	}
}

func TestPickFreeIPv6(t *testing.T) {
	c := mustConfig(t, `{"Network":"10.5.4.0/28","EnableIPv6":true,"IPv6Network":"fd00:5::/124"}`)
	// IPv6 subnets: fd00:5::4/126, ::8/126, ::c/126. IPv4 subnets of the leases do not matter here.
	ls := []subnet.Lease{
		{Subnet: pfx("10.5.4.4/30"), IPv6Subnet: pfx("fd00:5::4/126")},
		{Subnet: pfx("10.5.4.8/30"), IPv6Subnet: pfx("fd00:5::c/126")},
		{Subnet: pfx("10.5.4.12/30")}, // no IPv6 subnet
	}
	for range 50 {
		got, ok := subnet.PickFree(c, ls, true)
		if !ok || got != pfx("fd00:5::8/126") {
			t.Fatalf("PickFree(v6) = %v, %v; want fd00:5::8/126", got, ok)
		}
	}
	if got, ok := subnet.PickFree(c, ls, false); ok {
		t.Errorf("PickFree(v4) = %v, want none free", got)
	}
	ls = append(ls, subnet.Lease{Subnet: pfx("10.5.4.0/30"), IPv6Subnet: pfx("fd00:5::8/126")})
	if got, ok := subnet.PickFree(c, ls, true); ok {
		t.Errorf("PickFree(v6) = %v, want none free", got)
	}
}
