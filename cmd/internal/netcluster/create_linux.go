package netcluster

import "context"

// CreateNode creates one more node (its namespace, plugged into the underlay with the next address) without
// starting its agent, so a caller can prepare the namespace first (plant leftover devices or routes, say).
// Then StartAgent and, once the agent can get a lease, Attach. Close removes it like every other node.
func (c *Cluster) CreateNode() (*Node, error) { return c.newNode() }

// Attach waits for the node's env file, then attaches its container as Start and AddNode do (bridge cbr0,
// container namespace, forwarding on) and waits until the agent reports ready. Call it once per node, for
// a node made with CreateNode; Start and AddNode attach their nodes themselves.
func (n *Node) Attach(ctx context.Context) error { return n.attach(ctx) }
