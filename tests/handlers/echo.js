// Test handler: the smallest useful one, for the throughput and exactly-once tests.
function handler(event) { return { id: event.id }; }
