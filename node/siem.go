package node

func newAlerter(n *Node) (alerter, error) { return nil, nil }
