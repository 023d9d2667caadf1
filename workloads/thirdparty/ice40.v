// Place-and-route input for the nextpnr-ice40 third-party workload (iCE40 HX1K).
module counter #(parameter W = 16) (input clk, input rst, input en, output reg [W-1:0] q);
  always @(posedge clk)
    if (rst) q <= 0;
    else if (en) q <= q + 1'b1;
endmodule

module mac #(parameter W = 8) (input clk, input [W-1:0] a, input [W-1:0] b,
                                output reg [2*W+3:0] acc);
  always @(posedge clk) acc <= acc + a * b;
endmodule

module top (input clk, input rst, input [7:0] a, input [7:0] b, output reg [7:0] y, output reg p);
  wire [15:0] c0; wire [23:0] c1; wire [19:0] m;
  counter #(.W(16)) u0 (.clk(clk), .rst(rst), .en(1'b1), .q(c0));
  counter #(.W(24)) u1 (.clk(clk), .rst(rst), .en(c0[3]), .q(c1));
  mac #(.W(8)) u2 (.clk(clk), .a(a ^ c0[7:0]), .b(b ^ c1[7:0]), .acc(m));
  reg [31:0] lfsr;
  always @(posedge clk) begin
    lfsr <= rst ? 32'h1 : {lfsr[30:0], lfsr[31] ^ lfsr[21] ^ lfsr[1] ^ lfsr[0]};
    y <= m[19:12] ^ m[7:0] ^ c1[23:16] ^ lfsr[7:0] ^ (c0[15:8] + a);
    p <= ^{m, c1, lfsr} ^ (c0 < {a, b});
  end
endmodule
