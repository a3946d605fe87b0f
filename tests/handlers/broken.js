// Test handler that does not compile.
function handler(event) { return event.; }
