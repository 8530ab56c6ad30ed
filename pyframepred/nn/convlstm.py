class ConvLSTMCell: pass
class ConvLSTM: pass
