package policy

// Live is a published snapshot with the generation it was published as:
// 1 for the first policy a gateway serves, one more for each reload it
// applies. The gateway that serves it numbers it (docs/design.md).
type Live struct {
	*Snapshot
	Generation uint64
}
